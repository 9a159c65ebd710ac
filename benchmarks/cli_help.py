#!/usr/bin/env python
"""Time ``python -m equiformer_calc.cli VERB --help`` for every registered subcommand.

Each verb runs ``--repeats`` times in a fresh process; the table gives the median wall time and
the median CPU time (user + system of the child; on a loaded machine the wall time stretches by
the load, the CPU time stays what the command costs). ``--package-root DIR`` times another
checkout (for example the main branch before a change) by running the processes there. The
markdown table goes to stdout.

Example:
    python benchmarks/cli_help.py --repeats 5
    python benchmarks/cli_help.py --package-root /path/to/other/checkout
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("bench.cli_help")


def verbs(root: Path) -> list[str]:
    """The registered verbs of the checkout at ``root`` (read in a subprocess there)."""
    code = "from equiformer_calc.cli import COMMANDS; print(' '.join(sorted(COMMANDS)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    return done.stdout.split()


def time_help(root: Path, verb: str, repeats: int) -> tuple[float, float]:
    """(median wall s, median CPU s) of ``VERB --help`` run in ``root``."""
    wall, cpu = [], []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "equiformer_calc.cli", verb, "--help"], cwd=root,
                       capture_output=True, check=True, env=env)
        wall.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(wall), statistics.median(cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package-root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="checkout whose equiformer_calc to time (default: this one)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per verb (default 3)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"`{args.package_root}`, {args.repeats} runs per verb, load average {load} at the start\n")
    print("| verb | wall median (s) | CPU median (s) |")
    print("|---|---:|---:|")
    for verb in verbs(args.package_root):
        wall, cpu = time_help(args.package_root, verb, args.repeats)
        log.info("%s: wall %.3f s, CPU %.3f s", verb, wall, cpu)
        print(f"| {verb} | {wall:.3f} | {cpu:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
