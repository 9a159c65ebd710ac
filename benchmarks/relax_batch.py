#!/usr/bin/env python
"""Batched relaxation (relax_batch) against one-by-one relaxations (relax) of the same systems.

Builds 32 slab+adsorbate systems (Cu, Pt, Pd, Ag x (111), (100) x O, H, CO, OH; 2x2x4 slabs at
the EMT lattice constants, bottom two layers fixed, adsorbate on a symmetry-distinct site),
relaxes them one by one with ``equiformer_calc.relax`` and then all together with
``equiformer_calc.relax_batch`` (same optimizer, same fmax and step cap), and reports wall times,
model calls and the largest final-energy difference. Uses the shipped checkpoint if present,
else the ``small`` preset with random weights (stated in the output).

Example:
    python benchmarks/relax_batch.py --threads 1 --update-results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import _common  # noqa: E402  (benchmarks/_common.py, beside this script)

log = logging.getLogger("bench.relax_batch")

SECTION = "## Batched relaxation"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--optimizer", default="FIRE", choices=["FIRE", "BFGS", "LBFGS"])
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=60, help="step cap per relaxation (same for both modes)")
    p.add_argument("--size", default="2x2x4", help="slab size nx x ny x layers")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--checkpoint", default=None, help="default: the shipped checkpoint, else random 'small' weights")
    p.add_argument("--update-results", type=Path, metavar="RESULTS_MD", help="replace the section in this file")
    return p.parse_args(argv)


def build_systems(size: tuple[int, int, int]):
    from ase.constraints import FixAtoms

    from equiformer_calc.surfaces import layer_indices
    from equiformer_calc.surfaces import build_surface, find_sites, place_adsorbate_on_site

    systems, labels = [], []
    for metal in ("Cu", "Pt", "Pd", "Ag"):
        for facet in ("111", "100"):
            slab = build_surface(metal, facet, size=size, vacuum=7.0)
            sites = find_sites(slab)
            for k, ads in enumerate(("O", "H", "CO", "OH")):
                site = sites[k % len(sites)]
                atoms = place_adsorbate_on_site(slab, ads, site)
                atoms.set_constraint(FixAtoms(mask=layer_indices(atoms.positions[:, 2]) < 2))
                systems.append(atoms)
                labels.append(f"{ads}@{metal}({facet}) {site.label}")
    return systems, labels


def make_calculator(args: argparse.Namespace):
    from equiformer_calc import Equiformer, EquiformerCalculator
    from equiformer_calc.checkpoint import DEFAULT_CHECKPOINT, available_checkpoints, read_metadata

    name = args.checkpoint or (DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT in available_checkpoints() else None)
    if name is not None:
        meta = read_metadata(name)
        step = meta.get("training", {}).get("step")
        desc = f"checkpoint `{name}`" + (f" (training step {step})" if step is not None else "")
        return EquiformerCalculator(name, dtype=args.dtype), desc
    import torch

    torch.manual_seed(0)
    model = Equiformer.from_preset("small", elements=["H", "C", "N", "O", "Cu", "Pd", "Ag", "Pt"])
    return EquiformerCalculator(model=model, dtype=args.dtype), "the `small` preset with random weights (no shipped checkpoint)"


def training_running() -> bool:
    """Whether an ``equiformer-calc train`` process runs on this machine (read-only /proc scan)."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "equiformer-calc train" in cmd and pid != str(os.getpid()):
                return True
    return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from equiformer_calc import relax, relax_batch

    size = tuple(int(n) for n in args.size.split("x"))
    systems, _labels = build_systems(size)  # type: ignore[arg-type]
    calc, model_desc = make_calculator(args)
    busy_before = training_running()
    calc.predict(systems[:2])  # warm-up

    predictor = calc.predictor
    original = predictor.predict
    sizes: list[int] = []

    def counted(structures, *a, **kw):
        structures = list(structures)
        sizes.append(len(structures))
        return original(structures, *a, **kw)

    predictor.predict = counted
    common = dict(calculator=calc, optimizer=args.optimizer, fmax=args.fmax, steps=args.steps)
    log.info("one-by-one: %d relaxations", len(systems))
    t0 = time.perf_counter()
    single = [relax(s, **common) for s in systems]
    t_single = time.perf_counter() - t0
    calls_single, evals_single = len(sizes), sum(sizes)
    sizes.clear()
    log.info("batched")
    t0 = time.perf_counter()
    batched = relax_batch(systems, progress=False, **common)
    t_batch = time.perf_counter() - t0
    calls_batch, evals_batch = len(sizes), sum(sizes)
    del predictor.predict
    busy = busy_before or training_running()

    de = [abs(a.final_energy - b.final_energy) for a, b in zip(single, batched) if a.error is None and b.error is None]
    same_steps = sum(a.nsteps == b.nsteps for a, b in zip(single, batched))
    conv = sum(r.converged for r in batched)
    nat = np.mean([len(s) for s in systems])
    table = "\n".join(
        [
            "| mode | wall time (s) | model calls | structure evaluations | ms / structure evaluation | speed-up |",
            "|---|---:|---:|---:|---:|---:|",
            f"| one by one (`relax`) | {t_single:.1f} | {calls_single} | {evals_single} | "
            f"{1e3 * t_single / evals_single:.1f} | 1.00x |",
            f"| batched (`relax_batch`) | {t_batch:.1f} | {calls_batch} | {evals_batch} | "
            f"{1e3 * t_batch / evals_batch:.1f} | {t_single / t_batch:.2f}x |",
        ]
    )
    summary = (
        f"{len(systems)} systems of {nat:.1f} atoms on average; {conv}/{len(systems)} converged within "
        f"{args.steps} steps; {same_steps}/{len(systems)} took the same number of steps in both modes; "
        f"largest final-energy difference {max(de) if de else float('nan'):.2e} eV ({args.dtype}); "
        f"batch sizes shrank from {sizes[0] if sizes else 0} to {sizes[-1] if sizes else 0} as relaxations converged."
    )
    print(table)
    print(summary)
    if args.update_results:
        update_results(args, table, summary, model_desc, busy)
    return 0


def update_results(args: argparse.Namespace, table: str, summary: str, model_desc: str, busy: bool) -> None:
    from importlib.metadata import version

    cpu = "unknown CPU"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    date = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    body = "\n".join(
        [
            SECTION,
            "",
            f"Machine: `nproc` = {nproc}, CPU: {cpu}, Python {platform.python_version()}, date: {date}; "
            f"torch {version('torch')} with {args.threads} thread(s), ase {version('ase')}.",
            f"Command: `{command}`",
            f"Model: {model_desc}; {args.dtype}; optimizer {args.optimizer}, fmax {args.fmax} eV/A, "
            f"at most {args.steps} steps.",
            "",
            "Both modes run the same ASE optimizer on the same structures; `relax_batch` evaluates all "
            "still-running relaxations in one `Predictor.predict` call per step, the converged ones drop out. "
            + (
                "**A training job (`equiformer-calc train`) was running in the background on the same 2 cores "
                "during this run**, so absolute times are inflated and noisy (quick repeated timings of the same model call varied by ~2x); "
                "compare the two rows of one run."
                if busy
                else "Nothing else was running."
            ),
            "",
            table,
            "",
            summary,
            "",
            "On CPU, batching amortises per-call overhead (Python, graph building, many small kernels); "
            "it cannot add arithmetic throughput, so the gain is modest and should shrink as systems grow. On a GPU the gain "
            "is expected to be larger, since one small structure leaves the device mostly idle (not measured: no GPU "
            "on this machine).",
            "",
        ]
    )
    path = args.update_results
    _common.update_section(path, SECTION, body)
    log.info("updated section %r of %s", SECTION, path)


if __name__ == "__main__":
    sys.exit(main())
