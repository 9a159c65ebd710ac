#!/usr/bin/env python
"""Batched finite-difference vibrations (equiformer_calc.workflows.vibrations.vibrate) against ASE's
``ase.vibrations.Vibrations`` on the same calculator: CO on top of a 3x3x4 Cu(111) slab (relaxed
first, slab fixed), the shipped default checkpoint, float32, delta 0.01 A, nfree 2.

Both compute the same 12 displaced structures (+ the undisplaced one); ASE evaluates them one call
at a time (and caches each in a file), ours in one batched ``predict`` call. Reports the median wall
time of each over ``--rounds`` rounds (alternating), the ratio, and the largest frequency difference.

Example:
    python benchmarks/vibrations.py --rounds 5 --update-results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: E402  (benchmarks/_common.py, beside this script)

SECTION = "## Batched vibrations"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--checkpoint", default=None, help="default: the shipped default checkpoint")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--update-results", type=Path, default=None, help="rewrite this RESULTS.md section")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import numpy as np
    from ase.build import add_adsorbate, fcc111, molecule
    from ase.constraints import FixAtoms
    from ase.vibrations import Vibrations

    from equiformer_calc import EquiformerCalculator, relax
    from equiformer_calc.workflows.vibrations import vibrate

    calc = EquiformerCalculator(checkpoint=args.checkpoint, dtype=args.dtype)
    slab = fcc111("Cu", (3, 3, 4), vacuum=7.0)
    add_adsorbate(slab, molecule("CO")[::-1], 1.9, "ontop")  # C down
    slab.set_constraint(FixAtoms(indices=list(range(36))))
    atoms = relax(slab, calculator=calc, fmax=0.02, steps=200).atoms
    indices = [36, 37]

    def ours():
        return vibrate(atoms, indices=indices, calculator=calc, progress=False).frequencies

    def ase_vib(folder):
        a = atoms.copy()
        a.calc = calc
        vib = Vibrations(a, indices=indices, delta=0.01, nfree=2, name=str(Path(folder) / "vib"))
        vib.run()
        f = np.asarray(vib.get_frequencies())
        return np.sort(np.where(np.abs(f.imag) > np.abs(f.real), -np.abs(f.imag), f.real))

    ours()  # warm-up (both share the calculator)
    t_ours, t_ase, c_ours, c_ase, diff = [], [], [], [], 0.0
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as folder:
            t0, c0 = time.perf_counter(), time.process_time()
            f_ase = ase_vib(folder)
            t_ase.append(time.perf_counter() - t0)
            c_ase.append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        f_ours = ours()
        t_ours.append(time.perf_counter() - t0)
        c_ours.append(time.process_time() - c0)
        diff = max(diff, float(np.abs(f_ours - f_ase).max()))
    m_ours, m_ase = float(np.median(t_ours)), float(np.median(t_ase))
    b_ours, b_ase = min(t_ours), min(t_ase)
    cm_ours, cm_ase = float(np.median(c_ours)), float(np.median(c_ase))
    ckpt = calc.model.checkpoint.name if calc.model.checkpoint else "in-memory"
    lines = [
        SECTION, "",
        f"`python benchmarks/vibrations.py {shlex.join(argv if argv is not None else sys.argv[1:])}`. "
        + _common.machine_line() + " The machine was shared with other jobs (loaded) during the run.",
        "",
        f"CO on top of a 3x3x4 Cu(111) slab (38 atoms; relaxed, slab fixed), checkpoint `{ckpt}`, {args.dtype}, "
        "delta 0.01 A, nfree 2: 12 displaced structures. Median of "
        f"{args.rounds} alternating rounds:", "",
        "| method | model calls | wall time (median) | wall time (best) | CPU time (median) |",
        "|---|---:|---:|---:|---:|",
        f"| ASE `Vibrations` (one call per displacement, file cache) | 13 | {1000 * m_ase:.0f} ms | {1000 * b_ase:.0f} ms "
        f"| {1000 * cm_ase:.0f} ms |",
        f"| `workflows.vibrations.vibrate` (one batched call) | 1 | {1000 * m_ours:.0f} ms | {1000 * b_ours:.0f} ms "
        f"| {1000 * cm_ours:.0f} ms |", "",
        f"Speed-up: **{m_ase / m_ours:.1f}x** (medians of wall time; best-of-{args.rounds}: {b_ase / b_ours:.1f}x; CPU "
        f"time: {cm_ase / cm_ours:.1f}x). Largest frequency difference: {diff:.3f} cm^-1 "
        f"({args.dtype}; float64 agreement is tested in tests/workflows/test_vibrations.py). Frequencies "
        f"(cm^-1): {', '.join(f'{x:.0f}' for x in f_ours)}; they depend on the shipped model's accuracy.",
        "",
        f"The issue's target, at least 5x, was {'met' if m_ase / m_ours >= 5 else 'NOT met'} in this run (median "
        "wall time). Why the ratio is limited: the 13 structures hold 494 atoms either way, and the model's cost is "
        "linear in atoms, so one batched call saves only the per-call overhead (graph building, Python, small "
        "kernels), which the CPU-time ratio measures. The rest of the wall-time gain comes from the batch using "
        "both cores while 38-atom calls run on one thread, and from each single call waiting for a core on a "
        "loaded machine; both vary with the load between runs.",
        "", _common.versions_line(["torch", "ase"]),
    ]
    text = "\n".join(lines)
    print(text)
    if args.update_results:
        _common.update_section(args.update_results, SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
