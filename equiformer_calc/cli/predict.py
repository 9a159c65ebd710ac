"""``equiformer-calc predict``: energies and forces of every structure of a file (the workflow is
:func:`equiformer_calc.workflows.predict.predict_file`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ._common import (
    POSITIVE_INT, add_executor_arguments, add_model_arguments, check_outputs, error_line, executor_from_args,
    settings_from_args,
)

__all__ = ["HELP", "add_arguments", "run"]

log = logging.getLogger(__name__)


HELP = "energies and forces of every structure of an extxyz file or ASE database, written to extxyz or CSV"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``equiformer-calc predict``."""
    parser.add_argument("input", help="extxyz file, ASE database (.db) or any ASE-readable structure file")
    parser.add_argument("--out", required=True, help="output: .extxyz / .xyz (labelled structures) or .csv")
    parser.add_argument("--chunk-size", type=POSITIVE_INT, default=64, metavar="K",
                        help="structures per task (default 64); float32 numbers depend on it (and on torch threads), "
                        "not on the number of workers")
    add_model_arguments(parser)
    add_executor_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """``equiformer-calc predict``: wrong inputs are errors of the command (one line, status 2);
    structures the model cannot evaluate are listed, marked in the output, and give status 1."""
    from ..workflows.predict import forces_csv_path, predict_file

    out = Path(args.out)
    check_outputs([out, forces_csv_path(out) if out.suffix.lower() == ".csv" else None], [args.input, args.checkpoint])
    with executor_from_args(args) as executor:
        result = predict_file(args.input, args.out, calculator=settings_from_args(args), executor=executor,
                              chunk_size=args.chunk_size)
    log.info("wrote %s", ", ".join(str(p) for p in result.files))
    if result.errors:
        first = min(result.errors)
        error_line("predict", f"{len(result.errors)} of {len(result.structures)} structure(s) have no prediction "
                   f"(first: structure {first}: {result.errors[first]}); they are marked in {args.out}")
        return 1
    return 0
