"""``equiformer-calc ipi``: the model as an i-PI force-field client (the adapter is
:mod:`equiformer_calc.integrations.ipi`)."""

from __future__ import annotations

import argparse
import logging

from ._common import NONNEGATIVE_FLOAT, add_model_arguments, calculator_from_args, number, read_structure

__all__ = ["HELP", "add_arguments", "run"]

log = logging.getLogger(__name__)


HELP = "serve the model as an i-PI force-field client (UNIX or TCP socket), with the virial for NPT"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``equiformer-calc ipi``."""
    parser.add_argument("structure", help="the structure i-PI starts from (any ASE format): elements and pbc")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--unix", metavar="NAME", help="i-PI UNIX socket name (<address> of a mode='unix' ffsocket; /tmp/ipi_NAME)")
    where.add_argument("--port", type=number(int, ge=1, le=65535), help="TCP port of a mode='inet' ffsocket")
    parser.add_argument("--host", default="localhost", help="host of the i-PI server for --port (default localhost)")
    parser.add_argument("--wait", type=NONNEGATIVE_FLOAT, default=60.0, help="seconds to keep trying to connect (default 60)")
    parser.add_argument("--skin", type=NONNEGATIVE_FLOAT, default=1.0, help="neighbour-list skin, A (0: rebuild every call)")
    add_model_arguments(parser, dtype="float64")  # float64: i-PI integrates long trajectories


def run(args: argparse.Namespace) -> int:
    """``equiformer-calc ipi``: read the structure, load the model, answer i-PI until it stops."""
    from ..integrations.ipi import run_client

    atoms = read_structure(args.structure)
    calc = calculator_from_args(args)
    # no server there (IPIConnectionError) is the user's doing: errors.py gives it exit 2 and a hint
    run_client(atoms, calc, unix=args.unix, host=args.host, port=args.port, wait_s=args.wait)
    return 0
