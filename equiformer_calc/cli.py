"""The ``equiformer-calc`` command line: one entry point, one subcommand per workflow.

Each subcommand lives in the module that owns the concept; that module exposes
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``. The modules are imported
only when their subcommand runs, so ``equiformer-calc --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

#: subcommand name -> module implementing it
COMMANDS: dict[str, str] = {
    "datagen": "equiformer_calc.train.datagen",
    "train": "equiformer_calc.train.trainer",
    "evaluate": "equiformer_calc.train.evaluate",
    "relax": "equiformer_calc.workflows.relax",
    "md": "equiformer_calc.workflows.md",
    "screen": "equiformer_calc.workflows.screening",
    "predict": "equiformer_calc.workflows.predict",
    "serve": "equiformer_calc.service.server",
    "convert-reference": "equiformer_calc.reference",
}

_HELP: dict[str, str] = {
    "datagen": "generate an EMT-labelled dataset of adsorbates on metal surfaces (extxyz)",
    "train": "train an Equiformer on labelled structures (YAML config); resumable, DDP-capable",
    "evaluate": "error metrics and parity plots of a checkpoint on a labelled dataset",
    "relax": "relax a structure (positions, optionally the cell) with a checkpoint",
    "md": "molecular dynamics (NVE or Langevin NVT) with a checkpoint",
    "screen": "adsorbate screening over metals, facets and adsorbates into an ASE database",
    "predict": "energies and forces of every structure of an extxyz file or ASE database, to extxyz or CSV",
    "serve": "serve a checkpoint over HTTP with dynamic batching",
    "convert-reference": "convert a checkpoint of the reference Equiformer code to ours",
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; subcommand parsers are filled in lazily by :func:`main`."""
    parser = argparse.ArgumentParser(
        prog="equiformer-calc",
        description="Equiformer interatomic potential: data, training, simulation and serving.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        sub.add_parser(name, help=_HELP.get(name, ""), add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # find the subcommand first, then build its full parser from its module
    known, _ = parser.parse_known_args(argv)
    if known.command is None:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[known.command])
    full = argparse.ArgumentParser(
        prog=f"equiformer-calc {known.command}", description=getattr(module, "HELP", _HELP.get(known.command))
    )
    full.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    module.add_arguments(full)
    idx = argv.index(known.command)
    args = full.parse_args(argv[:idx] + argv[idx + 1 :])
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
