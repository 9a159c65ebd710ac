"""``equiformer-calc evaluate``: error metrics and parity plots of a checkpoint on labelled data
(the evaluation is :func:`equiformer_calc.train.evaluate.evaluate`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ._common import POSITIVE_INT, add_executor_arguments, check_outputs, device_type, executor_from_args

__all__ = ["HELP", "add_arguments", "run"]

log = logging.getLogger(__name__)


HELP = "error metrics and parity plots of a checkpoint on a labelled dataset"

#: train.evaluate.DEFAULT_BY, named here so that --help does not import torch (tests/cli/test_help.py
#: checks they are equal)
DEFAULT_BY = ("config_type", "frame_kind", "split", "metal")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``equiformer-calc evaluate``."""
    parser.add_argument("checkpoint", help="checkpoint file (.safetensors) or shipped name (e.g. emt-small)")
    parser.add_argument("data", nargs="+",
                        help="labelled file(s): extxyz, ASE .db or postgresql:// URL, .aselmdb (file or folder), vasprun.xml, OUTCAR, ...")
    parser.add_argument("--energy-key", default="energy", help="energy label name (e.g. REF_energy; default: energy)")
    parser.add_argument("--forces-key", default="forces", help="forces label name (e.g. REF_forces; default: forces)")
    parser.add_argument("--stress-key", default="stress", help="stress label name (e.g. REF_stress; default: stress)")
    parser.add_argument("--out", type=Path, help="folder for metrics.json and parity PNGs (default: JSON to stdout)")
    parser.add_argument("--by", default=",".join(DEFAULT_BY),
                        help=f"comma-separated frame info keys to group by "
                        f"(default: {','.join(DEFAULT_BY)}; '' for none)")
    parser.add_argument("--batch-size", type=POSITIVE_INT, default=16, help="frames per model call (default: 16)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--device", default="cpu", type=device_type, help="torch device (default: cpu)")
    parser.add_argument("--max-frames", type=POSITIVE_INT, help="evaluate only the first N frames of each file")
    parser.add_argument("--threads", type=POSITIVE_INT, help="torch intra-op threads")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_executor_arguments(parser)
    parser.add_argument("--batches-per-task", type=POSITIVE_INT, default=8, metavar="K",
                        help="with --scheduler/--workers: model batches per task (default 8)")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``equiformer-calc evaluate``."""
    from ..checkpoint import load_checkpoint
    from ..data.readers import LabelKeys
    from ..io import jsonable
    from ..runtime import set_threads
    from ..train.evaluate import evaluate, format_table

    if args.out is not None:
        check_outputs([args.out / "metrics.json", args.out / "parity_*.png"], [*args.data, args.checkpoint])
    set_threads(args.threads)
    by = [k.strip() for k in args.by.split(",") if k.strip()]
    model = load_checkpoint(args.checkpoint)
    fan_out = args.scheduler is not None or args.workers is not None
    with executor_from_args(args) as executor:
        result = evaluate(model, args.data, batch_size=args.batch_size, dtype=args.dtype, device=args.device,
                          by=by, out=args.out, max_frames=args.max_frames, progress=not args.no_progress,
                          keys=LabelKeys(args.energy_key, args.forces_key, args.stress_key),
                          executor=executor if fan_out else None, batches_per_task=args.batches_per_task)
    log.info("metrics:\n%s", format_table(result))
    if args.out is None:
        sys.stdout.write(json.dumps(jsonable(result), indent=1, allow_nan=False) + "\n")
    return 0
