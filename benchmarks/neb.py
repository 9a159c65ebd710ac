#!/usr/bin/env python
"""Batched NEB (equiformer_calc.workflows.neb.run_neb) against ASE's ``ase.mep.NEB`` with one
calculator per image (evaluated one image at a time): O hopping from the fcc to the hcp hollow of a
3x3x4 Cu(111) slab (bottom two layers fixed; endpoints relaxed first), the shipped default
checkpoint, climbing image, FIRE, linear interpolation, same fmax and step cap.

Reports the wall time of each band optimisation, steps, model calls, both barriers and their
difference.

Example:
    python benchmarks/neb.py --images 5 --update-results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

import _common  # noqa: E402  (benchmarks/_common.py, beside this script)

SECTION = "## Batched NEB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=5)
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--checkpoint", default=None, help="default: the shipped default checkpoint")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--update-results", type=Path, default=None, help="rewrite this RESULTS.md section")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import numpy as np
    from ase.build import add_adsorbate, fcc111
    from ase.optimize import FIRE

    from equiformer_calc import EquiformerCalculator, relax_batch
    from equiformer_calc.surfaces import add_fix_bottom
    from equiformer_calc.workflows.neb import interpolate_band, run_neb

    calc = EquiformerCalculator(checkpoint=args.checkpoint, dtype=args.dtype)
    ends = []
    for site in ("fcc", "hcp"):
        s = fcc111("Cu", (3, 3, 4), vacuum=7.0)
        add_adsorbate(s, "O", 1.2, site)
        add_fix_bottom(s, 2)
        ends.append(s)
    initial, final = (r.atoms for r in relax_batch(ends, calculator=calc, fmax=0.02, steps=300, progress=False))

    t0 = time.perf_counter()
    ours = run_neb(initial, final, images=args.images, calculator=calc, fmax=args.fmax, steps=args.steps,
                   interpolation="linear", saddle_vibrations=False)
    t_ours = time.perf_counter() - t0

    band, neb = interpolate_band(initial, final, args.images, "linear", climb=True)
    for image in band:
        image.calc = EquiformerCalculator(model=calc.model, dtype=args.dtype)
    t0 = time.perf_counter()
    opt = FIRE(neb, logfile=None)
    converged = opt.run(fmax=args.fmax, steps=args.steps)
    t_ase = time.perf_counter() - t0
    e_ase = np.array([im.get_potential_energy() for im in band])
    b_ase = float(e_ase.max() - e_ase[0])

    ckpt = calc.model.checkpoint.name if calc.model.checkpoint else "in-memory"
    lines = [
        SECTION, "",
        f"`python benchmarks/neb.py {shlex.join(argv if argv is not None else sys.argv[1:])}`. "
        + _common.machine_line() + " The machine was shared with other jobs (loaded) during the run.",
        "",
        f"O hop fcc -> hcp on 3x3x4 Cu(111) (37 atoms, bottom two layers fixed, relaxed endpoints), checkpoint "
        f"`{ckpt}`, {args.dtype}, {args.images} images, climbing image, FIRE, fmax {args.fmax} eV/A:", "",
        "| method | steps | model calls | wall time | barrier |", "|---|---:|---:|---:|---:|",
        f"| ASE `NEB`, one calculator per image | {opt.nsteps} ({'converged' if converged else 'not converged'}) | "
        f"{(opt.nsteps + 1) * args.images + 2} | {t_ase:.1f} s | {b_ase:.4f} eV |",
        f"| `workflows.neb.run_neb` (all images in one call per step) | {ours.nsteps} "
        f"({'converged' if ours.converged else 'not converged'}) | {ours.calls} | {t_ours:.1f} s | {ours.barrier:.4f} eV |",
        "",
        f"Speed-up: **{t_ase / t_ours:.1f}x**; barrier difference {1000 * abs(ours.barrier - b_ase):.3f} meV "
        f"({args.dtype}: batched and single float32 evaluations differ in the last bits, so the two bands may take "
        "slightly different steps; float64 equality to 1e-6 eV is tested in tests/workflows/test_neb.py). The barrier "
        "itself depends on the shipped model's accuracy.",
        "", _common.versions_line(["torch", "ase"]),
    ]
    text = "\n".join(lines)
    print(text)
    if args.update_results:
        _common.update_section(args.update_results, SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
