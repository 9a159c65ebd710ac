"""``equiformer-calc relax``: relax one structure with a checkpoint (the workflow is
:func:`equiformer_calc.workflows.relax.relax`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..workflows._common import resolve_calculator
from ..workflows.relax import OPTIMIZERS, relax, write_relax_outputs
from ._common import add_memory_argument, add_model_arguments, check_structure, output_stem, read_structure

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
    parser.add_argument("--fmax", type=float, default=0.05, help="force criterion, eV/A (default 0.05)")
    parser.add_argument("--steps", type=int, default=500, help="maximum optimizer steps (default 500)")
    parser.add_argument("--optimizer", default="BFGS", type=str.upper, choices=sorted(OPTIMIZERS))
    parser.add_argument("--fix-bottom", type=int, default=None, metavar="K", help="fix the K lowest atomic layers")
    parser.add_argument("--fix-below", type=float, default=None, metavar="Z", help="fix atoms with z < Z (A)")
    parser.add_argument("--cell", action="store_true", help="relax the cell too (3D-periodic inputs)")
    add_model_arguments(parser)
    add_memory_argument(parser)


def run(args: argparse.Namespace) -> int:
    """``equiformer-calc relax``: read, relax, write trajectory + final structure + CSV + PNG."""
    atoms = read_structure(args.input, args.index, args.format)
    calc = resolve_calculator(
        None, args.checkpoint, device=args.device, dtype=args.dtype, dispersion=args.dispersion, xc=args.xc,
        memory=args.memory,
    )
    check_structure(atoms, calc)  # every input error surfaces before anything is written
    output = args.output or f"{Path(args.input).stem or Path(args.input).name}_relaxed.traj"
    stem = output_stem(output)
    traj = Path(output) if Path(output).suffix == ".traj" else stem.with_name(stem.name + ".traj")
    log.info("relaxing %s (%d atoms) from %s", atoms.get_chemical_formula(), len(atoms), args.input)
    result = relax(
        atoms, calculator=calc, fmax=args.fmax, steps=args.steps, optimizer=args.optimizer,
        fix_bottom=args.fix_bottom, fix_below=args.fix_below, cell=args.cell, trajectory=traj, logfile="-",
        device=args.device, dtype=args.dtype,
    )
    paths = write_relax_outputs(result, stem)
    log.info(
        "%s after %d steps: energy %.6f -> %.6f eV (%+.6f eV), max force %.4f eV/A",
        "converged" if result.converged else "NOT converged", result.nsteps, result.initial_energy,
        result.final_energy, result.final_energy - result.initial_energy, result.fmax[-1],
    )
    log.info("wrote %s, %s", traj, ", ".join(str(p) for p in paths.values()))
    return 0
