"""Peak memory per edge of energy(+forces) calls in fast mode, to calibrate ``predictor.bytes_per_edge``.

Each case runs in a fresh process: the model and the graph are built, the RSS just before one
predict() call is read, and ``ru_maxrss`` after it gives the call's peak increase. Two sizes of a
periodic Cu bulk give the slope (bytes per edge; the fixed overhead cancels). The table compares it
with the estimate the predictor uses for its memory budget, so the budget's margin is visible.
Fast mode across presets and dtypes here; ``benchmarks/memory.py`` measures fast against low mode
per atom on one preset. Both calibrate the one memory model, ``predictor.call_bytes``.

    python benchmarks/memory_budget.py            # writes the "Memory per edge" section of RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks._common import machine_line, update_section, versions_line  # noqa: E402

#: (preset, dtype, properties, two supercell repeats of the 4-atom cubic Cu cell)
CASES = [
    ("tiny", "float32", "energy,forces", (4, 7)),
    ("tiny", "float64", "energy,forces", (4, 6)),
    ("tiny", "float32", "energy", (4, 7)),
    ("small", "float32", "energy,forces", (3, 5)),
    ("small", "float64", "energy,forces", (3, 4)),
    ("small", "float32", "energy,forces,stress", (3, 5)),
    ("small", "float32", "energy", (4, 6)),
    ("md17-l2", "float32", "energy,forces", (2, 3)),
]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(preset: str, dtype: str, properties: str, repeat: int) -> dict:
    import torch
    from ase.build import bulk

    from equiformer_calc.graph import structure_from_atoms
    from equiformer_calc.model import Equiformer
    from equiformer_calc.predictor import Predictor, bytes_per_edge

    torch.set_num_threads(1)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    atoms.rattle(0.02, seed=0)
    model = Equiformer.from_preset(preset, elements=["Cu"])
    predictor = Predictor(model, dtype=dtype, memory="fast", memory_budget=None)
    props = properties.split(",")
    structure = structure_from_atoms(atoms)
    edges = predictor.graph(structure).num_edges
    predictor.predict([atoms[:4]], props)  # warm-up: kernels, allocator pools
    before = _rss_bytes()
    predictor.predict([structure], props)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"atoms": len(atoms), "edges": edges, "peak_increase": peak - before,
            "estimate_per_edge": bytes_per_edge(model.config, dtype, "forces" in props or "stress" in props)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=4, metavar=("PRESET", "DTYPE", "PROPS", "REPEAT"), help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print the table, do not update RESULTS.md")
    args = parser.parse_args()
    if args.child:
        preset, dtype, props, repeat = args.child
        print(json.dumps(child(preset, dtype, props, int(repeat))))
        return
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    for preset, dtype, props, (small, large) in CASES:
        runs = []
        for repeat in (small, large):
            out = subprocess.run([sys.executable, __file__, "--child", preset, dtype, props, str(repeat)],
                                 capture_output=True, text=True, env=env, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        slope = (runs[1]["peak_increase"] - runs[0]["peak_increase"]) / (runs[1]["edges"] - runs[0]["edges"])
        est = runs[1]["estimate_per_edge"]
        rows.append(f"| {preset} | {dtype} | {props} | {runs[0]['edges']} / {runs[1]['edges']} | "
                    f"{runs[0]['peak_increase'] / 2**20:.0f} / {runs[1]['peak_increase'] / 2**20:.0f} | "
                    f"{slope / 1024:.1f} | {est / 1024:.1f} | {est / slope:.2f} |")
        print(rows[-1], flush=True)
    body = "\n".join([
        "## Memory per edge (the predictor's memory budget)",
        "",
        machine_line(),
        versions_line(["torch", "e3nn", "vesin"]),
        "",
        "Peak RSS increase of one predict() call on a rattled periodic Cu bulk at two sizes (fresh process "
        "each); the slope is the measured cost of one more edge, the estimate is "
        "`predictor.bytes_per_edge` (what the memory budget charges). Ratio > 1: the budget is conservative. "
        "Repeated runs of the same case differ by up to ~25% (allocator state; e.g. 'small' float32 energy+forces "
        "measured 36-43 KB / edge over three runs), which is why the constants are rounded up.",
        "",
        "| preset | dtype | properties | edges (2 sizes) | peak increase MB | measured KB / edge | estimate KB / edge | estimate / measured |",
        "|---|---|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Command: `python benchmarks/memory_budget.py`.",
    ])
    if not args.no_write:
        update_section(HERE / "RESULTS.md", "## Memory per edge (the predictor's memory budget)", body)


if __name__ == "__main__":
    main()
