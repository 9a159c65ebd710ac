#!/usr/bin/env python
"""Time the neighbour-list backends that equiformer_calc.graph could use.

Compares vesin, matscipy and ASE (plus equiformer_calc.graph.neighbor_list itself, which is
vesin with validation, overlap check and sorting) on periodic fcc Cu bulk of 500, 2,048 and
8,000 atoms and on a 37-atom Cu(111)+O slab with pbc [T, T, F], cutoff 5 A by default.
Checks that every backend finds the same number of (i, j, S) pairs, and prints a markdown table
of median wall times (ms) over several repeats on stdout; progress goes to the log (stderr).

Example:
    python benchmarks/neighbor_list.py --threads 2 --update-results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import _common  # noqa: E402  (benchmarks/_common.py, beside this script)

log = logging.getLogger("bench.neighbor_list")

SECTION = "## Neighbour list (graph.py backend choice)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--cutoff", type=float, default=5.0, help="cutoff radius in Angstrom")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per backend and system")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=20.0,
        help="stop repeating a backend on a system once this much time is spent (min 3 repeats)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=2,
        help="sets OMP/OPENBLAS/MKL/RAYON_NUM_THREADS before numpy and the backends are imported",
    )
    p.add_argument(
        "--sizes",
        type=str,
        default="5x5x5,8x8x8,10x10x20",
        help="comma-separated repeats of the 4-atom cubic Cu cell (500, 2048 and 8000 atoms)",
    )
    p.add_argument("--no-slab", action="store_true", help="skip the Cu(111)+O slab")
    p.add_argument("--output", type=Path, help="also write the markdown table to this file")
    p.add_argument(
        "--update-results",
        type=Path,
        metavar="RESULTS_MD",
        help=f"write/replace the section '{SECTION}' of this markdown file (table, machine, command)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ[var] = str(n)


def build_systems(sizes: str, with_slab: bool):
    import numpy as np
    from ase.build import add_adsorbate, bulk, fcc111

    systems = []
    for spec in sizes.split(","):
        reps = tuple(int(x) for x in spec.lower().split("x"))
        if len(reps) != 3:
            raise SystemExit(f"bad --sizes entry {spec!r}: expected AxBxC")
        atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(reps)
        atoms.rattle(0.01, seed=42)  # break exact symmetry; shells stay far from 5 A
        systems.append((f"Cu fcc bulk {spec}", atoms))
    if with_slab:
        slab = fcc111("Cu", size=(3, 3, 4), vacuum=8.0)  # 36 atoms, pbc [T, T, F]
        add_adsorbate(slab, "O", 1.2, "fcc")
        slab.rattle(0.01, seed=43)
        assert len(slab) == 37 and list(slab.pbc) == [True, True, False]
        systems.append(("Cu(111) 3x3x4 + O slab", slab))
    for _, atoms in systems:
        atoms.positions = np.ascontiguousarray(atoms.positions)
    return systems


def backends(cutoff: float):
    """name -> function(atoms) returning the number of (i, j, S) pairs (full list)."""
    import numpy as np
    import vesin
    from ase.neighborlist import neighbor_list as ase_nl
    from matscipy.neighbours import neighbour_list as matscipy_nl

    from equiformer_calc.graph import neighbor_list as graph_nl
    from equiformer_calc.graph import structure_from_atoms

    def run_vesin(atoms):
        calc = vesin.NeighborList(cutoff=cutoff, full_list=True)
        i, j, S = calc.compute(atoms.positions, atoms.cell.array, atoms.pbc.tolist(), "ijS")
        return len(i)

    def run_matscipy(atoms):
        i, j, S = matscipy_nl("ijS", atoms, cutoff)
        return len(i)

    def run_ase(atoms):
        i, j, S = ase_nl("ijS", atoms, cutoff)
        return len(i)

    def run_graph(atoms):
        i, j, S = graph_nl(structure_from_atoms(atoms), cutoff)
        return len(i)

    del np
    return {
        "vesin": run_vesin,
        "matscipy": run_matscipy,
        "ase": run_ase,
        "graph.neighbor_list": run_graph,
    }


def time_backend(fn, atoms, repeats: int, max_seconds: float) -> tuple[float, int]:
    """Median wall time in ms after one untimed warm-up call; also returns the pair count."""
    import numpy as np

    n_pairs = fn(atoms)  # warm-up (imports, allocations, JIT-free but cache-cold)
    times = []
    start = time.perf_counter()
    for k in range(repeats):
        t0 = time.perf_counter()
        fn(atoms)
        times.append(time.perf_counter() - t0)
        if k >= 2 and time.perf_counter() - start > max_seconds:
            log.info("  stopping after %d repeats (--max-seconds)", k + 1)
            break
    return float(np.median(times)) * 1e3, n_pairs


def fmt_ms(ms: float) -> str:
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def markdown_table(rows, names: list[str]) -> str:
    header = ["system", "atoms", "pbc", "pairs"] + [f"{n} (ms)" for n in names] + ["ase / vesin"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    for r in rows:
        pbc = "".join("T" if p else "F" for p in r["pbc"])
        cells = [r["system"], str(r["atoms"]), pbc, str(r["pairs"])]
        cells += [fmt_ms(r["ms"][n]) for n in names]
        cells.append(f"{r['ms']['ase'] / r['ms']['vesin']:.1f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_line() -> str:
    return _common.machine_line()


def versions_line() -> str:
    return _common.versions_line(("vesin", "matscipy", "ase", "numpy"))


def update_results(path: Path, table: str, args: argparse.Namespace, command: str) -> None:
    body = "\n".join(
        [
            SECTION,
            "",
            machine_line(),
            versions_line(),
            f"Command: `{command}`",
            "",
            f"Median wall time over up to {args.repeats} repeats (after one warm-up call), cutoff "
            f"{args.cutoff} A, full neighbour list ('ijS'); every backend returned the same number of "
            "pairs. `graph.neighbor_list` is equiformer_calc's wrapper (vesin + validation, overlap "
            "check and sorting). vesin (and so graph.neighbor_list) uses `--threads` threads via "
            "OMP_NUM_THREADS; matscipy and ASE are single-threaded. Absolute times on a shared VM vary "
            "between runs (up to ~2x seen here), so compare columns within one run.",
            "",
            table,
            "",
        ]
    )
    _common.update_section(path, SECTION, body)
    log.info("updated section %r of %s", SECTION, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    set_threads(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])

    systems = build_systems(args.sizes, not args.no_slab)
    fns = backends(args.cutoff)
    names = list(fns)
    rows = []
    for label, atoms in systems:
        log.info("%s: %d atoms, pbc %s", label, len(atoms), atoms.pbc.tolist())
        ms, counts = {}, {}
        for name, fn in fns.items():
            ms[name], counts[name] = time_backend(fn, atoms, args.repeats, args.max_seconds)
            log.info("  %-20s %10.3f ms  %d pairs", name, ms[name], counts[name])
        if len(set(counts.values())) != 1:
            log.error("pair counts differ on %s: %s", label, counts)
            return 1
        rows.append(dict(system=label, atoms=len(atoms), pbc=atoms.pbc.tolist(), pairs=counts["vesin"], ms=ms))

    table = markdown_table(rows, names)
    print(table)
    if args.output:
        args.output.write_text(table + "\n")
        log.info("wrote %s", args.output)
    if args.update_results:
        update_results(args.update_results, table, args, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
