#!/usr/bin/env python
"""Speed of distilled students against their teacher, in one run, with the same threads.

``python benchmarks/teacher_speed.py [--teacher sevennet] [--models pbe-distilled-small,emt-small]
[--threads 1] [--rounds 3] [--calls 10] [--update-results benchmarks/RESULTS.md]``

One energy+forces call on the 37-atom Cu(111)+O slab (3x3x4 fcc111, O in an fcc hollow) and on a
108-atom periodic Cu bulk, for the teacher (any labeller of ``equiformer_calc.data.labellers``) and for
each student checkpoint (``EquiformerCalculator``, float32). The atoms are displaced a little before
every call so no calculator can return a cached result. The runners take turns for ``--rounds``
rounds (so a change in machine load hits all of them alike); the median over all calls is reported,
with the teacher/student ratio.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import machine_line, update_section, versions_line  # noqa: E402

SECTION = "## Distilled students against their teacher (speed)"
log = logging.getLogger("bench.teacher_speed")


def systems() -> dict[str, Any]:
    """The structures timed: the 37-atom slab of the issue and a 108-atom bulk."""
    from ase.build import add_adsorbate, bulk, fcc111

    slab = fcc111("Cu", size=(3, 3, 4), vacuum=8.0)
    add_adsorbate(slab, "O", 1.2, "fcc")
    return {"Cu(111)+O slab, 37 atoms": slab, "Cu bulk, 108 atoms": bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3)}


def time_calls(calc: Any, atoms: Any, calls: int, rng: np.random.Generator) -> list[float]:
    """Seconds per energy+forces call on freshly displaced copies of ``atoms``."""
    out = []
    for _ in range(calls):
        work = atoms.copy()
        work.positions += rng.normal(scale=0.01, size=work.positions.shape)
        work.calc = calc
        t0 = time.perf_counter()
        work.get_potential_energy()
        work.get_forces()
        out.append(time.perf_counter() - t0)
    return out


def run(teacher: str, models: list[str], threads: int, rounds: int, calls: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    from equiformer_calc.calculators.local import EquiformerCalculator
    from equiformer_calc.data.labellers import resolve_labeller

    labeller = resolve_labeller(teacher)
    runners: dict[str, Callable[[], Any]] = {f"teacher: {teacher}": labeller.calculator}
    for name in models:
        runners[name] = lambda name=name: EquiformerCalculator(checkpoint=name)
    calcs = {name: make() for name, make in runners.items()}
    structures = systems()
    rng = np.random.default_rng(0)
    times: dict[str, dict[str, list[float]]] = {s: {r: [] for r in calcs} for s in structures}
    for sname, atoms in structures.items():  # warm-up: first call builds caches, JIT paths, ...
        for rname, calc in calcs.items():
            time_calls(calc, atoms, 2, rng)
    for k in range(rounds):
        for sname, atoms in structures.items():
            for rname, calc in calcs.items():
                times[sname][rname] += time_calls(calc, atoms, calls, rng)
        log.info("round %d/%d done", k + 1, rounds)
    medians = {s: {r: 1000 * statistics.median(v) for r, v in d.items()} for s, d in times.items()}
    return {"teacher": teacher, "teacher_version": labeller.version, "models": models, "threads": threads, "calls": rounds * calls, "median_ms": medians}


def format_section(result: dict[str, Any], command: str) -> str:
    teacher = f"teacher: {result['teacher']}"
    lines = [SECTION, "", machine_line(), versions_line(["torch", "e3nn", "ase", "sevenn"]), "",
             f"`{command}`: median ms per energy+forces call over {result['calls']} calls per runner, "
             f"{result['threads']} thread(s) for every runner, runners taking turns. Teacher: "
             f"{result['teacher_version']}.", "",
             "| structure | runner | ms / call | teacher / runner |", "|---|---|---:|---:|"]
    for sname, row in result["median_ms"].items():
        for rname, ms in row.items():
            lines.append(f"| {sname} | {rname} | {ms:.1f} | {row[teacher] / ms:.1f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="sevennet", help="labeller of the teacher (default sevennet)")
    parser.add_argument("--models", default="pbe-distilled-small,emt-small", help="comma-separated checkpoints")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=10, help="timed calls per runner, structure and round")
    parser.add_argument("--update-results", type=Path, metavar="RESULTS_MD")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run(args.teacher, [m for m in args.models.split(",") if m], args.threads, args.rounds, args.calls)
    command = "python benchmarks/teacher_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = format_section(result, command.strip())
    sys.stdout.write(text)
    if args.update_results:
        update_section(args.update_results, SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
