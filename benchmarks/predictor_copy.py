#!/usr/bin/env python
"""What it costs the Predictor to own a copy of the model it is given.

``Predictor(model)`` deep-copies ``model`` (so converting it to the predictor's dtype and device,
eval mode and frozen parameters never touch the caller's module); ``copy_model=False`` hands a
model nobody else holds over instead (the calculator does that for a checkpoint it loaded itself).
This script times the copy for the shipped size ('small') and the paper's md17-l2, next to what
building the model and loading a checkpoint cost, and prints a markdown table (median of repeats).

Example:
    python benchmarks/predictor_copy.py --threads 1 --update-results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import time
from pathlib import Path

import _common  # noqa: E402  (benchmarks/_common.py, beside this script)

log = logging.getLogger("bench.predictor_copy")

SECTION = "## Predictor model copy"
ELEMENTS = ["H", "C", "N", "O", "Cu"]


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="small,md17-l2", help="comma-separated model presets")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--update-results", type=Path, default=None, help="write the table into this RESULTS.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from equiformer_calc.model import Equiformer
    from equiformer_calc.predictor import Predictor

    torch.set_num_threads(args.threads)
    rows = []
    for preset in [s for s in args.presets.split(",") if s]:
        model = Equiformer.from_preset(preset, elements=ELEMENTS)
        size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        copy_ms = _median_ms(lambda: copy.deepcopy(model), args.repeats)
        build_ms = _median_ms(lambda: Equiformer.from_preset(preset, elements=ELEMENTS), args.repeats)
        owned_ms = _median_ms(lambda: Predictor(model), args.repeats)
        handed_ms = _median_ms(lambda: Predictor(copy.deepcopy(model), copy_model=False), args.repeats) - copy_ms
        rows.append(f"| {preset} | {model.num_parameters():,} | {size / 1e6:.2f} | {copy_ms:.0f} | {build_ms:.0f} | "
                    f"{owned_ms:.0f} | {handed_ms:.0f} |")
        log.info(rows[-1])
    body = "\n".join([
        SECTION, "",
        f"`python benchmarks/predictor_copy.py --threads {args.threads}` (median of {args.repeats}; ms). "
        "`Predictor(model)` owns a deep copy of the model it is given; most of the copy time is e3nn's "
        "generated code being rebuilt, not the weights. The calculator skips the copy for a checkpoint it "
        "loaded itself (`copy_model=False`).", "",
        _common.machine_line(), _common.versions_line(["torch", "e3nn"]), "",
        "| preset | parameters | weights (MB) | deep copy | building the model | `Predictor(model)` | "
        "`Predictor(..., copy_model=False)` |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
    ])
    print(body)
    if args.update_results is not None:
        _common.update_section(args.update_results, SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
