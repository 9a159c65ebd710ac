"""``equiformer-calc relax``: relax one structure with a checkpoint (the workflow is
:func:`equiformer_calc.workflows.relax.relax`)."""

from __future__ import annotations

import argparse
import logging

from ._common import (
    NONNEGATIVE_INT, OPTIMIZER_NAMES, POSITIVE_FLOAT, add_fix_arguments, add_memory_argument, add_model_arguments,
    start_trajectory_run,
)

__all__ = ["HELP", "add_arguments", "run"]

log = logging.getLogger(__name__)


HELP = "relax a structure (positions, optionally the cell) with a checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``equiformer-calc relax``."""
    parser.add_argument("input", help="structure file in any ASE-readable format (extxyz, POSCAR, CIF, traj...)")
    parser.add_argument(
        "-o", "--output", default=None,
        help="trajectory to write (default: <input stem>_relaxed.traj); side files use its stem",
    )
    parser.add_argument("--index", default="-1", help="frame of a multi-frame input (default: the last)")
    parser.add_argument("--format", default=None, help="input format if ASE cannot guess it from the name")
    parser.add_argument("--fmax", type=POSITIVE_FLOAT, default=0.05, help="force criterion, eV/A (> 0; default 0.05)")
    parser.add_argument("--steps", type=NONNEGATIVE_INT, default=500, help="maximum optimizer steps (default 500)")
    parser.add_argument("--optimizer", default="BFGS", type=str.upper, choices=OPTIMIZER_NAMES)
    add_fix_arguments(parser)
    parser.add_argument("--cell", action="store_true", help="relax the cell too (3D-periodic inputs)")
    add_model_arguments(parser)
    add_memory_argument(parser)


def run(args: argparse.Namespace) -> int:
    """``equiformer-calc relax``: read, relax, write trajectory + final structure + CSV + PNG."""
    from ..workflows.relax import relax, relax_output_paths, write_relax_outputs

    stem, traj, atoms, calc = start_trajectory_run(args, "relaxed", relax_output_paths)
    log.info("relaxing %s (%d atoms) from %s", atoms.get_chemical_formula(), len(atoms), args.input)
    result = relax(
        atoms, calculator=calc, fmax=args.fmax, steps=args.steps, optimizer=args.optimizer,
        fix_bottom=args.fix_bottom, fix_below=args.fix_below, cell=args.cell, trajectory=traj, logfile="-",
    )
    paths = write_relax_outputs(result, stem)
    log.info(
        "%s after %d steps: energy %.6f -> %.6f eV (%+.6f eV), max force %.4f eV/A",
        "converged" if result.converged else "NOT converged", result.nsteps, result.initial_energy,
        result.final_energy, result.final_energy - result.initial_energy, result.fmax[-1],
    )
    log.info("wrote %s, %s", traj, ", ".join(str(p) for p in paths.values()))
    return 0
