"""``equiformer-calc adsorbml``: the AdsorbML-style relaxation benchmark (the workflow is
:func:`equiformer_calc.workflows.adsorbml.relax_benchmark`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ._common import (
    NONNEGATIVE_INT, OPTIMIZER_NAMES, POSITIVE_FLOAT, POSITIVE_INT, check_outputs, device_type, settings_from_args,
)

__all__ = ["HELP", "add_arguments", "run"]

log = logging.getLogger(__name__)


HELP = "AdsorbML-style relaxation benchmark of a checkpoint on a datagen folder's held-out relaxation tasks"

#: workflows.adsorbml.FMAX and MAX_STEPS (the references' settings), named here so that --help
#: does not import torch (tests/cli/test_help.py checks they are equal)
FMAX = 0.05
MAX_STEPS = 500
#: the files the benchmark reads from the data folder and writes to --out
INPUT_FILES = ("relax_initial.extxyz", "relax_relaxed.extxyz", "relax_tasks.json")
OUTPUT_FILES = ("relax_benchmark.json", "relax_parity.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``equiformer-calc adsorbml``."""
    parser.add_argument("checkpoint", help="checkpoint file (.safetensors) or shipped name (e.g. emt-small)")
    parser.add_argument("data_dir", type=Path,
                        help="datagen output folder with relax_initial.extxyz, relax_relaxed.extxyz and relax_tasks.json")
    parser.add_argument("--max-tasks", type=POSITIVE_INT, help="at most this many tasks (whole site groups first)")
    parser.add_argument("--optimizer", type=str.upper, choices=OPTIMIZER_NAMES, default="BFGS",
                        help="ASE optimizer (default: BFGS, as the references)")
    parser.add_argument("--fmax", type=POSITIVE_FLOAT, default=FMAX, help=f"force criterion, eV/A (default: {FMAX})")
    parser.add_argument("--steps", type=NONNEGATIVE_INT, default=MAX_STEPS, help=f"step limit (default: {MAX_STEPS})")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--device", default="cpu", type=device_type, help="torch device (default: cpu)")
    parser.add_argument("--threads", type=POSITIVE_INT, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, help="folder for relax_benchmark.json and relax_parity.png "
                        "(default: the summary as JSON on stdout)")
    parser.add_argument("--labeller", help="labeller of the references (default: the one recorded in the data)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``equiformer-calc adsorbml``."""
    from ..io import jsonable
    from ..runtime import set_threads
    from ..workflows.adsorbml import format_summary, relax_benchmark

    if args.out is not None:
        check_outputs([args.out / name for name in OUTPUT_FILES],
                      [*(args.data_dir / name for name in INPUT_FILES), args.checkpoint])
    set_threads(args.threads)
    result = relax_benchmark(settings_from_args(args), args.data_dir, max_tasks=args.max_tasks, optimizer=args.optimizer,
                             fmax=args.fmax, steps=args.steps, out=args.out,
                             progress=not args.no_progress, labeller=args.labeller)
    log.info("relaxation benchmark:\n%s", format_summary(result))
    if args.out is None:
        sys.stdout.write(json.dumps(jsonable(result["summary"]), indent=1, allow_nan=False) + "\n")
    return 0
