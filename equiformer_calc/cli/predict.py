"""``equiformer-calc predict``: energies and forces of every structure of a file (the workflow is
:func:`equiformer_calc.workflows.predict.predict_file`)."""

from __future__ import annotations

import argparse
import logging

from ..workflows.predict import predict_file
from ._common import add_executor_arguments, add_model_arguments, executor_from_args

__all__ = ["HELP", "add_arguments", "run"]

log = logging.getLogger(__name__)


HELP = "energies and forces of every structure of an extxyz file or ASE database, written to extxyz or CSV"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``equiformer-calc predict``."""
    parser.add_argument("input", help="extxyz file, ASE database (.db) or any ASE-readable structure file")
    parser.add_argument("--out", required=True, help="output: .extxyz / .xyz (labelled structures) or .csv")
    parser.add_argument("--chunk-size", type=int, default=64, metavar="K",
                        help="structures per task (default 64); float32 numbers depend on it (and on torch threads), "
                        "not on the number of workers")
    add_model_arguments(parser)
    add_executor_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """``equiformer-calc predict``."""
    try:
        with executor_from_args(args) as executor:
            result = predict_file(args.input, args.out, checkpoint=args.checkpoint, device=args.device,
                                  dtype=args.dtype, executor=executor, chunk_size=args.chunk_size)
    except (FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    log.info("wrote %s", ", ".join(str(p) for p in result.files))
    return 1 if result.errors else 0
