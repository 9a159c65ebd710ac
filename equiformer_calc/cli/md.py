"""``equiformer-calc md``: molecular dynamics of one structure with a checkpoint (the workflow is
:func:`equiformer_calc.workflows.md.run_md`)."""

from __future__ import annotations

import argparse
import logging

from ._common import (
    ENSEMBLE_NAMES, NONNEGATIVE_FLOAT, NONNEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT, add_fix_arguments,
    add_memory_argument, add_model_arguments, start_trajectory_run,
)

__all__ = ["HELP", "add_arguments", "run"]

log = logging.getLogger(__name__)


HELP = "molecular dynamics (NVE or Langevin NVT) with a checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``equiformer-calc md``."""
    parser.add_argument("input", help="structure file in any ASE-readable format")
    parser.add_argument("-o", "--output", default=None, help="trajectory (default: <input stem>_md.traj)")
    parser.add_argument("--index", default="-1", help="frame of a multi-frame input (default: the last)")
    parser.add_argument("--format", default=None, help="input format if ASE cannot guess it")
    parser.add_argument("--ensemble", default="nve", type=str.lower, choices=ENSEMBLE_NAMES)
    parser.add_argument("--temperature", type=NONNEGATIVE_FLOAT, default=300.0,
                        help="K (>= 0): initial velocities and NVT target")
    parser.add_argument("--timestep", type=POSITIVE_FLOAT, default=1.0, help="fs (> 0; default 1.0)")
    parser.add_argument("--steps", type=NONNEGATIVE_INT, default=1000)
    parser.add_argument("--friction", type=NONNEGATIVE_FLOAT, default=0.01, help="Langevin friction, 1/fs (default 0.01)")
    parser.add_argument("--log-interval", type=POSITIVE_INT, default=10, help="steps between trajectory frames / CSV rows")
    parser.add_argument("--seed", type=NONNEGATIVE_INT, default=0, help="velocities and Langevin noise")
    parser.add_argument("--skin", type=NONNEGATIVE_FLOAT, default=1.0, help="neighbour-list skin, A (0: rebuild every step)")
    add_fix_arguments(parser)
    parser.add_argument(
        "--keep-velocities", action="store_true",
        help="use the input's momenta (default: draw them at --temperature unless the input has some)",
    )
    add_model_arguments(parser)
    add_memory_argument(parser)


def run(args: argparse.Namespace) -> int:
    """``equiformer-calc md``: read, integrate, write trajectory + CSV + PNG, report the drift."""
    from ..workflows.md import md_output_paths, run_md, write_md_outputs

    stem, traj, atoms, calc = start_trajectory_run(args, "md", md_output_paths)
    log.info(
        "%s MD of %s (%d atoms): %d steps of %g fs at %g K",
        args.ensemble.upper(), atoms.get_chemical_formula(), len(atoms), args.steps, args.timestep, args.temperature,
    )
    result = run_md(
        atoms, ensemble=args.ensemble, temperature=args.temperature, timestep=args.timestep, steps=args.steps,
        friction=args.friction, trajectory=traj, log_interval=args.log_interval, seed=args.seed, calculator=calc, fix_bottom=args.fix_bottom, fix_below=args.fix_below,
        init_velocities=None if not args.keep_velocities else False,
    )
    paths = write_md_outputs(result, stem, args.log_interval)
    log.info(
        "mean T %.1f K; total-energy drift %.4g meV/atom/ps (%s); neighbour searches: %s for %d steps",
        float(result.temperature[1:].mean()) if len(result.temperature) > 1 else float("nan"),
        1e3 * result.drift_per_atom_per_ps,
        "NVE: should be ~0" if result.ensemble == "nve" else "NVT: not conserved, for reference",
        result.neighbor_builds if result.neighbor_builds is not None else "one per step", args.steps,
    )
    log.info("wrote %s, %s", traj, ", ".join(str(p) for p in paths.values()))
    return 0
