"""``equiformer-calc neb``: climbing-image nudged-elastic-band barrier between two structures (the
workflow is :func:`equiformer_calc.workflows.neb.run_neb`)."""

from __future__ import annotations

import argparse
import logging

from ._common import NONNEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT, add_model_arguments, calculator_from_args, read_structure

__all__ = ["HELP", "add_arguments", "run"]

log = logging.getLogger(__name__)

HELP = "reaction barrier between two relaxed structures by a climbing-image NEB (all images batched; resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``equiformer-calc neb``."""
    parser.add_argument("initial", help="relaxed initial state (any ASE-readable file; its constraints hold on every image)")
    parser.add_argument("final", help="relaxed final state (same atoms in the same order)")
    parser.add_argument("--images", type=POSITIVE_INT, default=5, metavar="N", help="intermediate images (default 5)")
    parser.add_argument("--climb", action=argparse.BooleanOptionalAction, default=True,
                        help="climbing image (default: on)")
    parser.add_argument("--fmax", type=POSITIVE_FLOAT, default=0.05, help="force criterion of the band, eV/A (default 0.05)")
    parser.add_argument("--steps", type=NONNEGATIVE_INT, default=500, help="maximum optimizer steps (default 500)")
    parser.add_argument("--optimizer", default="FIRE", type=str.upper, choices=["BFGS", "FIRE", "LBFGS", "MDMIN"])
    parser.add_argument("--interpolation", default="idpp", choices=["idpp", "linear"])
    parser.add_argument("--mic", action="store_true", help="interpolate with the minimum-image convention")
    parser.add_argument("--spring", type=POSITIVE_FLOAT, default=0.1, help="spring constant, eV/A^2 (default 0.1)")
    parser.add_argument("--relax-endpoints", action="store_true",
                        help="relax both endpoints first (together, batched; their constraints hold)")
    parser.add_argument("--no-vibrations", action="store_true", help="skip the saddle's vibrational analysis")
    parser.add_argument("--out-dir", default="neb", help="journal and outputs; rerun to resume (default ./neb)")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """``equiformer-calc neb``: run (or resume) the band, print the barrier, write the profile."""
    from ..workflows.neb import run_neb

    initial = read_structure(args.initial)
    final = read_structure(args.final)
    calc = calculator_from_args(args)
    result = run_neb(initial, final, images=args.images, calculator=calc, climb=args.climb, fmax=args.fmax,
                     steps=args.steps, optimizer=args.optimizer, interpolation=args.interpolation, mic=args.mic,
                     k=args.spring, out_dir=args.out_dir, saddle_vibrations=not args.no_vibrations,
                     relax_endpoints=args.relax_endpoints)
    freq = "" if result.imaginary_frequency is None else f", imaginary frequency {result.imaginary_frequency:.1f}i cm^-1"
    print(f"barrier {result.barrier:.4f} eV (reverse {result.reverse_barrier:.4f} eV, reaction energy "
          f"{result.reaction_energy:+.4f} eV{freq}; {'converged' if result.converged else 'NOT converged'} in "
          f"{result.nsteps} steps)")
    log.info("wrote %s", ", ".join(str(p) for p in result.files.values()))
    return 0 if result.converged else 1
