"""The ``equiformer-calc`` command line: one entry point, one module per subcommand.

Each subcommand is a module of this package (``cli/relax.py``, ``cli/serve.py``, ...) exposing
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``; it parses options and calls
the library (workflows, data, train, service), which never imports this package. What the
commands share (THE structure-reading helper, the model / memory / dispersion / Dask options) is
``cli/_common.py``. The modules are imported only when their subcommand runs, so
``equiformer-calc --help`` stays fast (no torch import).

Errors: a wrong input (missing file, unsupported element, bad structure, unknown checkpoint, bad
option value, structure over the memory budget) ends the command with one line on stderr,
``equiformer-calc CMD: error: <cause> (hint: <what to do>)``, and exit status 2; anything else is
reported the same way with status 1. ``-v`` adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from typing import Sequence

#: subcommand name -> module implementing it
COMMANDS: dict[str, str] = {
    name: f"{__name__}.{name.replace('-', '_')}"
    for name in ("datagen", "train", "evaluate", "adsorbml", "relax", "md", "screen", "predict", "serve",
                 "convert-reference", "ipi", "lammps", "neb", "vibrations", "free-energy", "distil", "specialize")
}

_HELP: dict[str, str] = {
    "datagen": "generate an EMT-labelled dataset of adsorbates on metal surfaces (extxyz)",
    "train": "train an Equiformer on labelled structures (YAML config); resumable, DDP-capable",
    "evaluate": "error metrics and parity plots of a checkpoint on a labelled dataset",
    "adsorbml": "AdsorbML-style relaxation benchmark of a checkpoint on a datagen folder's held-out relaxation tasks",
    "relax": "relax a structure (positions, optionally the cell) with a checkpoint",
    "md": "molecular dynamics (NVE or Langevin NVT) with a checkpoint",
    "screen": "adsorbate screening over metals, facets and adsorbates into an ASE database",
    "predict": "energies and forces of every structure of an extxyz file or ASE database, to extxyz or CSV",
    "serve": "serve a checkpoint over HTTP with dynamic batching",
    "convert-reference": "convert a checkpoint of the reference Equiformer code to ours",
    "ipi": "serve a checkpoint as an i-PI force-field client (path-integral MD, NPT, ...)",
    "distil": "active-learning distillation: student exploration, teacher labels where it is wrong, continued training",
    "specialize": "fine-tune a checkpoint on your slabs/adsorbates against your reference calculator (active learning)",
    "lammps": "run a LAMMPS input with the model as its force field (fix external pf/callback)",
    "neb": "reaction barrier between two relaxed structures by a climbing-image NEB (all images batched; resumable)",
    "vibrations": "vibrational frequencies, ZPE and harmonic free energy of an adsorbate (displacements batched)",
    "free-energy": "free energies, limiting potentials and volcano plots (CHE) from a screen's summary CSV and database",
}


def _version() -> str:
    from .. import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; subcommand parsers are filled in lazily by :func:`main`."""
    parser = argparse.ArgumentParser(
        prog="equiformer-calc",
        description="Equiformer interatomic potential: data, training, simulation and serving.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
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
        level=logging.DEBUG if args.verbose or known.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write(f"equiformer-calc {known.command}: interrupted\n")
        return 130
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            raise
        hint = f"see equiformer-calc {known.command} --help"
        return _report(known.command, " ".join(str(exc.code).split()), hint, 2, args.verbose or known.verbose)
    except Exception as exc:  # noqa: BLE001 - every error becomes one line (and a traceback with -v)
        status, hint = _classify(exc)
        return _report(known.command, _one_line(exc), hint, status, args.verbose or known.verbose)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = f"unknown key {exc.args[0]!r}"
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return text or type(exc).__name__


def _classify(exc: BaseException) -> tuple[int, str | None]:
    """(exit status, hint) of an error, from the package's one error table
    (:mod:`equiformer_calc.errors`): 2 for wrong inputs, 1 for the unexpected."""
    from ..errors import classify

    kind = classify(exc)
    return kind.exit_code, kind.hint


def _report(command: str, message: str, hint: str | None, status: int, verbose: bool) -> int:
    if verbose:
        traceback.print_exc()
    line = f"equiformer-calc {command}: error: {message}"
    if hint:
        line += f" (hint: {hint}{'' if verbose or status == 1 else '; -v shows the traceback'})"
    sys.stderr.write(line + "\n")
    return status
