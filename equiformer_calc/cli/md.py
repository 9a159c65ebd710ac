"""``equiformer-calc md``: molecular dynamics of one structure with a checkpoint (the workflow is
:func:`equiformer_calc.workflows.md.run_md`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..workflows._common import resolve_calculator
from ..workflows.md import ENSEMBLES, run_md, write_md_outputs
from ._common import add_memory_argument, add_model_arguments, check_structure, output_stem, read_structure

__all__ = ["HELP", "add_arguments", "run"]

log = logging.getLogger(__name__)


HELP = "molecular dynamics (NVE or Langevin NVT) with a checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``equiformer-calc md``."""
    parser.add_argument("input", help="structure file in any ASE-readable format")
    parser.add_argument("-o", "--output", default=None, help="trajectory (default: <input stem>_md.traj)")
    parser.add_argument("--index", default="-1", help="frame of a multi-frame input (default: the last)")
    parser.add_argument("--format", default=None, help="input format if ASE cannot guess it")
    parser.add_argument("--ensemble", default="nve", type=str.lower, choices=ENSEMBLES)
    parser.add_argument("--temperature", type=float, default=300.0, help="K: initial velocities and NVT target")
    parser.add_argument("--timestep", type=float, default=1.0, help="fs (default 1.0)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs (default 0.01)")
    parser.add_argument("--log-interval", type=int, default=10, help="steps between trajectory frames / CSV rows")
    parser.add_argument("--seed", type=int, default=0, help="velocities and Langevin noise")
    parser.add_argument("--skin", type=float, default=1.0, help="neighbour-list skin, A (0: rebuild every step)")
    parser.add_argument("--fix-bottom", type=int, default=None, metavar="K", help="fix the K lowest atomic layers")
    parser.add_argument("--fix-below", type=float, default=None, metavar="Z", help="fix atoms with z < Z (A)")
    parser.add_argument(
        "--keep-velocities", action="store_true",
        help="use the input's momenta (default: draw them at --temperature unless the input has some)",
    )
    add_model_arguments(parser)
    add_memory_argument(parser)


def run(args: argparse.Namespace) -> int:
    """``equiformer-calc md``: read, integrate, write trajectory + CSV + PNG, report the drift."""
    atoms = read_structure(args.input, args.index, args.format)
    calc = resolve_calculator(
        None, args.checkpoint, device=args.device, dtype=args.dtype, skin=args.skin, dispersion=args.dispersion, xc=args.xc,
        memory=args.memory,
    )
    check_structure(atoms, calc)  # every input error surfaces before anything is written
    output = args.output or f"{Path(args.input).stem or Path(args.input).name}_md.traj"
    stem = output_stem(output)
    traj = Path(output) if Path(output).suffix == ".traj" else stem.with_name(stem.name + ".traj")
    log.info(
        "%s MD of %s (%d atoms): %d steps of %g fs at %g K",
        args.ensemble.upper(), atoms.get_chemical_formula(), len(atoms), args.steps, args.timestep, args.temperature,
    )
    result = run_md(
        atoms, ensemble=args.ensemble, temperature=args.temperature, timestep=args.timestep, steps=args.steps,
        friction=args.friction, trajectory=traj, log_interval=args.log_interval, seed=args.seed, skin=args.skin,
        calculator=calc, fix_bottom=args.fix_bottom, fix_below=args.fix_below,
        init_velocities=None if not args.keep_velocities else False, device=args.device, dtype=args.dtype,
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
