"""``equiformer-calc lammps``: run a LAMMPS input with the model as its force field (the bridge is
:mod:`equiformer_calc.integrations.lammps`)."""

from __future__ import annotations

import argparse
import logging

from ._common import NONNEGATIVE_FLOAT, add_dispersion_arguments, check_outputs, device_type

__all__ = ["HELP", "add_arguments", "run"]

log = logging.getLogger(__name__)


HELP = "run a LAMMPS input whose 'fix ID all external pf/callback' gets the model's forces"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``equiformer-calc lammps``."""
    parser.add_argument("input", help="LAMMPS input script (units metal) with 'fix ID all external pf/callback 1 1'")
    parser.add_argument("--elements", default=None, help="element of each atom type, comma-separated (default: from masses)")
    parser.add_argument("--checkpoint", default=None, help="shipped checkpoint name or .safetensors path (default: pbe-distilled-small)")
    parser.add_argument("--device", default="cpu", type=device_type, help="torch device (default: cpu)")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"], help="model precision (default float64)")
    parser.add_argument("--skin", type=NONNEGATIVE_FLOAT, default=1.0, help="neighbour-list skin, A (0: rebuild every step)")
    parser.add_argument("--log", default="log.lammps", help="LAMMPS log file (default log.lammps; 'none' for none)")
    parser.add_argument("--var", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="set a LAMMPS index variable, as lmp -var NAME VALUE (repeatable)")
    add_dispersion_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """``equiformer-calc lammps``: run the input with the model as its external force."""
    from ..calculators.local import EquiformerCalculator
    from ..integrations.lammps import load_lammps, run_input

    check_outputs([None if args.log == "none" else args.log], [args.input, args.checkpoint])
    calc = EquiformerCalculator(checkpoint=args.checkpoint, device=args.device, dtype=args.dtype, skin=args.skin,
                                dispersion=args.dispersion, xc=args.xc)
    elements = [e.strip() for e in args.elements.split(",")] if args.elements else None
    cmdargs = ["-nocite", "-log", args.log] + [x for name, value in args.var for x in ("-var", name, value)]
    lmp, fixes = run_input(args.input, calc, elements=elements, lmp=load_lammps(cmdargs))
    log.info("done: %d model evaluations", sum(f.evaluations for f in fixes))
    lmp.close()
    return 0
