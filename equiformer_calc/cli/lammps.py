"""``equiformer-calc lammps``: run a LAMMPS input with the model as its force field (the bridge is
:mod:`equiformer_calc.integrations.lammps`)."""

from __future__ import annotations

import argparse
import logging

from ._common import NONNEGATIVE_FLOAT, add_model_arguments, calculator_from_args, check_outputs

__all__ = ["HELP", "add_arguments", "run"]

log = logging.getLogger(__name__)


HELP = "run a LAMMPS input whose 'fix ID all external pf/callback' gets the model's forces"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``equiformer-calc lammps``."""
    parser.add_argument("input", help="LAMMPS input script (units metal) with 'fix ID all external pf/callback 1 1'")
    parser.add_argument("--elements", default=None, help="element of each atom type, comma-separated (default: from masses)")
    add_model_arguments(parser, dtype="float64")
    parser.add_argument("--skin", type=NONNEGATIVE_FLOAT, default=1.0, help="neighbour-list skin, A (0: rebuild every step)")
    parser.add_argument("--log", default="log.lammps", help="LAMMPS log file (default log.lammps; 'none' for none)")
    parser.add_argument("--var", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="set a LAMMPS index variable, as lmp -var NAME VALUE (repeatable)")


def run(args: argparse.Namespace) -> int:
    """``equiformer-calc lammps``: run the input with the model as its external force."""
    from ..integrations.lammps import load_lammps, run_input

    check_outputs([None if args.log == "none" else args.log], [args.input, args.checkpoint])
    calc = calculator_from_args(args)
    elements = [e.strip() for e in args.elements.split(",")] if args.elements else None
    cmdargs = ["-nocite", "-log", args.log] + [x for name, value in args.var for x in ("-var", name, value)]
    lmp, fixes = run_input(args.input, calc, elements=elements, lmp=load_lammps(cmdargs))
    log.info("done: %d model evaluations", sum(f.evaluations for f in fixes))
    lmp.close()
    return 0
