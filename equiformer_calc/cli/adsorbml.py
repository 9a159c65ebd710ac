"""``equiformer-calc adsorbml``: the AdsorbML-style relaxation benchmark (the workflow is
:func:`equiformer_calc.workflows.adsorbml.relax_benchmark`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..io import jsonable
from ..runtime import set_threads
from ..workflows.adsorbml import FMAX, MAX_STEPS, format_summary, relax_benchmark
from ..workflows.relax import OPTIMIZERS

__all__ = ["HELP", "add_arguments", "run"]

log = logging.getLogger(__name__)


HELP = "AdsorbML-style relaxation benchmark of a checkpoint on a datagen folder's held-out relaxation tasks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``equiformer-calc adsorbml``."""
    parser.add_argument("checkpoint", help="checkpoint file (.safetensors) or shipped name (e.g. emt-small)")
    parser.add_argument("data_dir", type=Path,
                        help="datagen output folder with relax_initial.extxyz, relax_relaxed.extxyz and relax_tasks.json")
    parser.add_argument("--max-tasks", type=int, help="at most this many tasks (whole site groups first)")
    parser.add_argument("--optimizer", type=str.upper, choices=sorted(OPTIMIZERS), default="BFGS",
                        help="ASE optimizer (default: BFGS, as the references)")
    parser.add_argument("--fmax", type=float, default=FMAX, help=f"force criterion, eV/A (default: {FMAX})")
    parser.add_argument("--steps", type=int, default=MAX_STEPS, help=f"step limit (default: {MAX_STEPS})")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, help="folder for relax_benchmark.json and relax_parity.png "
                        "(default: the summary as JSON on stdout)")
    parser.add_argument("--labeller", help="labeller of the references (default: the one recorded in the data)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``equiformer-calc adsorbml``."""
    set_threads(args.threads)
    result = relax_benchmark(args.checkpoint, args.data_dir, max_tasks=args.max_tasks, optimizer=args.optimizer,
                             fmax=args.fmax, steps=args.steps, dtype=args.dtype, device=args.device, out=args.out,
                             progress=not args.no_progress, labeller=args.labeller)
    log.info("relaxation benchmark:\n%s", format_summary(result))
    if args.out is None:
        sys.stdout.write(json.dumps(jsonable(result["summary"]), indent=1, allow_nan=False) + "\n")
    return 0
