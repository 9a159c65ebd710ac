#!/usr/bin/env python
"""Memory per atom of an energy+forces call in the two memory modes, and what low memory costs in time.

For each periodic Cu fcc bulk (500, 2,000 and 8,000 atoms by default; 5 A graph, shipped-size model
'small' with random weights, float32) and each memory mode ('fast', 'low'; see
``equiformer_calc.predictor.MEMORY_MODES``), a fresh Python process ("worker") builds the model
and the graph, reads its RSS, runs one energy+forces call (``predictor.compute``) and reads
``ru_maxrss``: the peak RSS increase of the call is the difference. The worker then times
``--repeats`` further calls (wall and process CPU time). Fast and low workers of one size run back
to back, so a changing background load hits both alike.

With ``--big N`` (e.g. 30000) the script also runs ``Predictor.predict`` end to end (neighbour
list, graph, memory='auto' selection, energy and forces) on an N-atom periodic Cu bulk in a fresh
process and reports its peak RSS (absolute and increase) and wall time.

The table also gives bytes per edge of each mode, from which the memory model
(``equiformer_calc.memory.MemoryModel``) is calibrated: fast mode is linear in the edges; low mode
is a per-edge part (fitted slope over the sizes) plus one chunk's working set (the intercept). The
script prints the model's estimate next to every measurement.

``--sweep`` calibrates across model sizes instead: for every case of :data:`SWEEP_CASES` (preset x
dtype x properties x mode), two sizes of a rattled Cu bulk each in a fresh process ("sweep"
worker: model and graph built, one warm-up call, then the peak RSS increase of one
``Predictor.predict`` call, its peak read in a window opened just before it: VmHWM after
/proc/self/clear_refs); the slope between the two sizes is the measured cost of one more edge
(the fixed overhead cancels) and is compared with the memory model's. ``tests/test_memory.py`` runs
this worker on a few small cases and checks the ratio stays in ``memory.ESTIMATE_BAND``.

Examples:
    python benchmarks/memory.py --update-results benchmarks/RESULTS.md --big 30000
    python benchmarks/memory.py --sweep --update-results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common

log = logging.getLogger("bench.memory")
ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Memory per atom and low-memory mode"
SWEEP_SECTION = "## Memory per edge (the predictor's memory budget)"
#: (preset, dtype, properties, mode, two supercell repeats of the 4-atom cubic Cu cell)
SWEEP_CASES = [
    ("tiny", "float32", "energy,forces", "fast", (4, 7)),
    ("tiny", "float64", "energy,forces", "fast", (4, 6)),
    ("tiny", "float32", "energy", "fast", (4, 7)),
    ("small", "float32", "energy,forces", "fast", (3, 5)),
    ("small", "float64", "energy,forces", "fast", (3, 4)),
    ("small", "float32", "energy,forces,stress", "fast", (3, 5)),
    ("small", "float32", "energy", "fast", (4, 6)),
    ("small", "float32", "energy,forces", "low", (5, 7)),
    ("md17-l2", "float32", "energy,forces", "fast", (2, 3)),
]
ELEMENTS = ["H", "C", "N", "O", "Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au"]
A_CU = 3.615


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="500,2000,8000", help="atom counts of the Cu bulks (multiples of 4 that factor into cubic cells)")
    p.add_argument("--modes", default="fast,low", help="memory modes to measure")
    p.add_argument("--preset", default="small", help="model size")
    p.add_argument("--threads", type=int, default=2, help="torch threads of every worker")
    p.add_argument("--repeats", type=int, default=2, help="timed calls after the first (memory) call")
    p.add_argument("--big", type=int, default=0, help="also run Predictor.predict end to end on a bulk of this many atoms")
    p.add_argument("--big-memory", default="auto", help="memory mode of the --big run")
    p.add_argument("--output", type=Path, help="also write the markdown to this file")
    p.add_argument("--json", type=Path, help="write the raw results to this JSON file")
    p.add_argument("--update-results", type=Path, metavar="RESULTS_MD", help=f"write/replace the section '{SECTION}'")
    p.add_argument("--from-json", type=Path, help="re-render the report of an earlier run's --json (no measuring)")
    p.add_argument("--sweep", action="store_true", help="per-edge calibration over presets, dtypes and properties "
                   f"(writes the section '{SWEEP_SECTION}')")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--worker", choices=["call", "predict", "sweep"], help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    p.add_argument("--properties", default="energy,forces", help=argparse.SUPPRESS)
    p.add_argument("--repeat", type=int, help=argparse.SUPPRESS)
    p.add_argument("--atoms", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def bulk_repeats(n_atoms: int) -> tuple[int, int, int]:
    """Repeats (a, b, c) of the 4-atom cubic Cu cell with 4abc = n_atoms, as close to a cube as possible."""
    cells = n_atoms // 4
    if cells * 4 != n_atoms:
        raise SystemExit(f"{n_atoms} atoms is not a multiple of 4")
    best = None
    for a in range(1, int(round(cells ** (1 / 3))) + 2):
        if cells % a:
            continue
        rest = cells // a
        for b in range(a, int(math.isqrt(rest)) + 1):
            if rest % b == 0:
                c = rest // b
                if best is None or c / a < best[2] / best[0]:
                    best = (a, b, c)
    if best is None:
        best = (1, 1, cells)
    return best


def cu_bulk(n_atoms: int):
    import numpy as np
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=A_CU, cubic=True).repeat(bulk_repeats(n_atoms))
    atoms.rattle(0.01, seed=42)
    atoms.positions = np.ascontiguousarray(atoms.positions)
    return atoms


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak() -> bool:
    """Start a new peak-RSS window (Linux: writing 5 to /proc/self/clear_refs resets VmHWM), so
    that :func:`_window_peak` is the peak of what runs next, not of the import or the set-up."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _window_peak() -> int:
    """VmHWM of /proc/self/status (bytes): the peak RSS since :func:`_reset_peak`."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return _peak()


def _model(preset: str):
    import torch

    from equiformer_calc.model import Equiformer

    torch.manual_seed(0)
    return Equiformer.from_preset(preset, elements=ELEMENTS)


def worker_call(args) -> dict:
    """One size, one mode: peak RSS increase of the first energy+forces call, then timed calls."""
    import torch

    from equiformer_calc.graph import build_graph, structure_from_atoms
    from equiformer_calc.memory import call_bytes
    from equiformer_calc.predictor import Predictor, compute

    torch.set_num_threads(args.threads)
    predictor = Predictor(_model(args.preset), dtype="float32", memory=args.mode)
    model = predictor.model
    graph = build_graph(structure_from_atoms(cu_bulk(args.atoms)), model.cutoff, dtype=torch.float32)
    before, peak_before = _rss(), _peak()
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.enable_grad():
        compute(model, graph, forces=True, memory=args.mode)
    first_ms = (time.perf_counter() - t0) * 1e3
    peak = _peak()
    wall, cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.enable_grad():
            compute(model, graph, forces=True, memory=args.mode)
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return {
        "atoms": graph.num_atoms, "edges": graph.num_edges, "mode": args.mode, "rss_before": before,
        "peak": max(peak, peak_before), "delta": max(peak - before, 0), "first_ms": first_ms, "ms": wall, "cpu_ms": cpu,
        "estimate": call_bytes(model.config, torch.float32, graph.num_edges, True, args.mode),
    }


def worker_predict(args) -> dict:
    """``Predictor.predict`` end to end (graph included) on one large bulk: peak RSS and time."""
    import torch

    from equiformer_calc.predictor import Predictor

    torch.set_num_threads(args.threads)
    before = _rss()
    predictor = Predictor(_model(args.preset), dtype="float32", memory=args.mode)
    atoms = cu_bulk(args.atoms)
    structure = predictor.to_structure(atoms)
    rss_ready = _rss()
    chosen: list[str] = []
    original = predictor.memory_mode

    def spy(edges, properties=("energy", "forces"), structures=1):
        mode = original(edges, properties, structures)
        chosen.append(mode)
        return mode

    predictor.memory_mode = spy  # type: ignore[method-assign]
    t0 = time.perf_counter()
    result = predictor.predict([structure], properties=("energy", "forces"))[0]
    wall = time.perf_counter() - t0
    edges = predictor.graph(structure).num_edges
    return {
        "atoms": len(atoms), "edges": edges, "mode": args.mode, "chosen": chosen, "rss_start": before,
        "rss_ready": rss_ready, "peak": _peak(), "seconds": wall, "energy_per_atom": result["energy"] / len(atoms),
        "max_force": float(abs(result["forces"]).max()),
    }


def worker_sweep(args) -> dict:
    """One sweep case at one size: peak RSS increase of one ``Predictor.predict`` call (after a
    warm-up call on 4 atoms: kernels and allocator pools) and the memory model's estimate."""
    import torch
    from ase.build import bulk

    from equiformer_calc.graph import structure_from_atoms
    from equiformer_calc.model import Equiformer
    from equiformer_calc.predictor import Predictor

    torch.set_num_threads(args.threads)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(args.repeat)
    atoms.rattle(0.02, seed=0)
    torch.manual_seed(0)
    predictor = Predictor(Equiformer.from_preset(args.preset, elements=["Cu"]), dtype=args.dtype, memory=args.mode,
                          memory_budget=None, copy_model=False)
    props = args.properties.split(",")
    structure = structure_from_atoms(atoms)
    edges = predictor.graph(structure).num_edges
    predictor.predict([atoms[:4]], props)
    before = _rss()
    windowed = _reset_peak()  # else ru_maxrss: the process's peak, which the set-up may hold
    predictor.predict([structure], props)
    peak = _window_peak() if windowed else _peak()
    return {"atoms": len(atoms), "edges": edges, "peak_increase": peak - before,
            "estimate": predictor.estimate_bytes(edges, props, args.mode),
            "estimate_per_edge": predictor.bytes_per_edge(props, args.mode)}


def sweep_case(preset: str, dtype: str, properties: str, mode: str, repeats: tuple[int, int], threads: int = 1,
               workdir: Path | None = None) -> dict:
    """Both sizes of one sweep case in fresh processes: the measured bytes per edge (slope) and the
    memory model's, for ``benchmarks`` and ``tests/test_memory.py``."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="equiformer-memory-"))
    runs = []
    for repeat in repeats:
        out = workdir / f"sweep-{preset}-{dtype}-{properties}-{mode}-{repeat}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "sweep", "--preset", preset, "--dtype", dtype,
               "--properties", properties, "--mode", mode, "--repeat", str(repeat), "--threads", str(threads),
               "--result", str(out)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"sweep worker failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        runs.append(json.loads(out.read_text()))
    small, large = runs
    slope = (large["peak_increase"] - small["peak_increase"]) / (large["edges"] - small["edges"])
    est = (large["estimate"] - small["estimate"]) / (large["edges"] - small["edges"])
    return {"preset": preset, "dtype": dtype, "properties": properties, "mode": mode, "runs": runs,
            "measured_per_edge": slope, "estimate_per_edge": est, "ratio": est / slope if slope > 0 else float("inf")}


def sweep_report(cases: list[dict], command: str) -> str:
    rows = [f"| {c['preset']} | {c['dtype']} | {c['properties']} | {c['mode']} | "
            f"{c['runs'][0]['edges']} / {c['runs'][1]['edges']} | "
            f"{c['runs'][0]['peak_increase'] / 2**20:.0f} / {c['runs'][1]['peak_increase'] / 2**20:.0f} | "
            f"{c['measured_per_edge'] / 1024:.1f} | {c['estimate_per_edge'] / 1024:.1f} | {c['ratio']:.2f} |" for c in cases]
    return "\n".join([
        SWEEP_SECTION, "",
        _common.machine_line(), _common.versions_line(["torch", "e3nn", "vesin"]), "",
        "Peak RSS increase of one predict() call on a rattled periodic Cu bulk at two sizes (fresh process "
        "each); the slope is the measured cost of one more edge, the estimate the slope of "
        "`memory.MemoryModel.call_bytes` (what the memory budget charges). Ratio > 1: the budget is conservative; "
        "`memory.ESTIMATE_BAND` is the documented range, checked by tests/test_memory.py on the small cases.",
        "",
        "| preset | dtype | properties | mode | edges (2 sizes) | peak increase MB | measured KB / edge | estimate KB / edge | estimate / measured |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
        *rows, "", f"Command: `{command}`.",
    ])


def run_worker(kind: str, args, atoms: int, mode: str, workdir: Path) -> dict | None:
    out = workdir / f"{kind}-{atoms}-{mode}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--atoms", str(atoms), "--mode", mode,
           "--preset", args.preset, "--threads", str(args.threads), "--repeats", str(args.repeats), "--result", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT))
    log.info("%s", shlex.join(cmd))
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0 or not out.exists():
        log.error("worker failed (exit %s):\n%s", proc.returncode, proc.stderr[-3000:])
        return {"atoms": atoms, "mode": mode, "error": f"exit code {proc.returncode}: " + (proc.stderr.strip().splitlines() or [""])[-1]}
    return json.loads(out.read_text())


def _median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else 0.5 * (v[len(v) // 2 - 1] + v[len(v) // 2])


def _fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares line y = a + b x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - b * mx, b


def report(args, rows: list[dict], big: dict | None, command: str, load: tuple) -> str:
    import speed  # table helpers

    out = [SECTION, ""]
    out += [_common.machine_line(), _common.versions_line(["torch", "e3nn", "numpy", "ase"])[:-1] + f". Threads per worker: {args.threads}."]
    out += [f"Command: `{command}`", ""]
    out += [
        f"Load average (1 min) {load[0]:.1f} before and {load[1]:.1f} after the run on {os.cpu_count()} cores. "
        "On a shared machine the wall times are contended; fast and low workers of a size ran back to back, and the "
        "ratios compare them under the same load (the CPU-time ratio is the less load-sensitive one).",
        "",
        f"Model: preset '{args.preset}', random weights, float32, periodic Cu fcc bulk (a = {A_CU} A, rattled 0.01 A), "
        "5 A radius graph. Peak RSS increase: `ru_maxrss` after the first energy+forces call (`predictor.compute`) "
        "minus the RSS just before it, each row in a fresh process with the model and graph already built. "
        f"ms: median of {args.repeats} further calls in the same process. Estimate: `memory.call_bytes` (the "
        "memory model used by memory='auto' and the budget check).",
        "",
    ]
    sys.path.insert(0, str(ROOT))
    from equiformer_calc.memory import call_bytes

    config = _model(args.preset).config  # the estimate of the current memory model
    for r in rows:
        if "error" not in r:
            r["estimate"] = call_bytes(config, "float32", r["edges"], True, r["mode"])
    header = ["atoms", "edges", "mode", "peak RSS increase (MB)", "KB / atom", "bytes / edge", "estimate (MB)",
              "ms / call", "CPU ms", "low / fast (wall)", "low / fast (CPU)"]
    table_rows = []
    by_size: dict[int, dict[str, dict]] = {}
    for r in rows:
        by_size.setdefault(r["atoms"], {})[r["mode"]] = r
    for r in rows:
        if "error" in r:
            table_rows.append([str(r["atoms"]), "-", r["mode"], r["error"][:60], "", "", "", "", "", "", ""])
            continue
        ms = _median(r["ms"]) if r["ms"] else r["first_ms"]
        fast = by_size[r["atoms"]].get("fast")
        rel = rel_cpu = "-"
        if r["mode"] == "low" and fast and "error" not in fast:
            fast_ms = _median(fast["ms"]) if fast["ms"] else fast["first_ms"]
            rel = f"{ms / fast_ms:.2f}x"
            if r["cpu_ms"] and fast["cpu_ms"]:
                rel_cpu = f"{_median(r['cpu_ms']) / _median(fast['cpu_ms']):.2f}x"
        table_rows.append([
            str(r["atoms"]), str(r["edges"]), r["mode"], f"{r['delta'] / 2**20:.0f}", f"{r['delta'] / 1024 / r['atoms']:.0f}",
            f"{r['delta'] / r['edges']:.0f}", f"{r['estimate'] / 2**20:.0f}", speed.fmt_ms(ms),
            speed.fmt_ms(_median(r["cpu_ms"]) if r["cpu_ms"] else None), rel, rel_cpu,
        ])
    out += [speed.table(header, table_rows, left=0), ""]
    for mode in ("fast", "low"):
        pts = [(r["edges"], r["delta"]) for r in rows if r.get("mode") == mode and "error" not in r]
        if len(pts) >= 2:
            a, b = _fit(pts)
            out.append(f"Fit of peak increase vs edges, {mode}: {b:.0f} bytes per edge + {a / 2**20:.0f} MB.")
    out.append("")
    if big:
        if "error" in big:
            out += [f"End-to-end run on {big['atoms']} atoms failed: {big['error']}", ""]
        else:
            out += [
                f"### {big['atoms']:,}-atom periodic Cu bulk, `Predictor.predict` end to end",
                "",
                f"`Predictor(memory='{big['mode']}')` (mode chosen: {', '.join(big['chosen'])}), energy and forces, neighbour list "
                f"and graph included: {big['edges']:,} edges, {big['seconds']:.0f} s wall, peak RSS {big['peak'] / 2**30:.2f} GiB "
                f"for the whole process ({(big['peak'] - big['rss_ready']) / 2**20:.0f} MB above the RSS with the model loaded "
                f"and the structure built, {(big['peak'] - big['rss_ready']) / 1024 / big['atoms']:.0f} KB per atom); "
                f"energy {big['energy_per_atom']:.4f} eV/atom (random weights), largest force {big['max_force']:.3g} eV/A.",
                "",
            ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        sys.path.insert(0, str(ROOT))
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s worker %(message)s", stream=sys.stderr)
        result = {"call": worker_call, "predict": worker_predict, "sweep": worker_sweep}[args.worker](args)
        args.result.write_text(json.dumps(result))
        return 0
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *(argv if argv is not None else sys.argv[1:])])
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        body = report(args, saved["rows"], saved["big"], saved.get("command", command), tuple(saved.get("load", (0.0, 0.0))))
        print(body)
        if args.update_results:
            _common.update_section(args.update_results, SECTION, body)
        return 0
    if args.sweep:
        cases = []
        for case in SWEEP_CASES:
            cases.append(sweep_case(*case))
            log.info("%s: estimate / measured per edge %.2f", " ".join(case[:4]), cases[-1]["ratio"])
        body = sweep_report(cases, command)
        print(body)
        if args.update_results:
            _common.update_section(args.update_results, SWEEP_SECTION, body)
        return 0
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="equiformer-memory-"))
    rows = []
    for n in (int(s) for s in args.sizes.split(",") if s):
        for mode in args.modes.split(","):
            res = run_worker("call", args, n, mode, workdir)
            rows.append(res)
            if "error" not in res:
                log.info("%d atoms %s: +%.0f MB, %.0f ms", n, mode, res["delta"] / 2**20, _median(res["ms"]) if res["ms"] else res["first_ms"])
    big = run_worker("predict", args, args.big, args.big_memory, workdir) if args.big else None
    body = report(args, rows, big, command, (load_before[0], os.getloadavg()[0]))
    print(body)
    if args.output:
        args.output.write_text(body + "\n")
    if args.json:
        load = (load_before[0], os.getloadavg()[0])
        args.json.write_text(json.dumps({"rows": rows, "big": big, "command": command, "load": load}, indent=1))
    if args.update_results:
        _common.update_section(args.update_results, SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
