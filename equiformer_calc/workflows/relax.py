"""Geometry optimisation of one structure (positions, optionally the cell) with ASE's optimizers.

Python::

    from equiformer_calc import relax
    result = relax(atoms, fmax=0.05, optimizer="BFGS", fix_bottom=2)
    result.atoms, result.energies, result.converged, result.nsteps

Command line::

    equiformer-calc relax POSCAR --fmax 0.05 --fix-bottom 2 -o out/relaxed.traj

writes ``out/relaxed.traj`` (every step), ``out/relaxed_final.extxyz`` (the relaxed structure with
its energy and forces), ``out/relaxed_energies.csv`` (energy and max force per step) and
``out/relaxed_energies.png`` (the energy trace).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.calculators.singlepoint import SinglePointCalculator
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS, FIRE, LBFGS
from ase.optimize.optimize import Optimizer

from ._common import (
    LazyTrajectory,
    add_fix_bottom,
    check_not_all_fixed,
    check_number,
    plot_lines,
    resolve_calculator,
    write_csv,
)

__all__ = ["OPTIMIZERS", "RelaxResult", "relax", "prepare_relaxation", "relax_output_paths", "write_relax_outputs"]

log = logging.getLogger(__name__)


#: optimizer names accepted by :func:`relax` and :func:`~equiformer_calc.workflows.relax_batch`
OPTIMIZERS: dict[str, type[Optimizer]] = {"BFGS": BFGS, "FIRE": FIRE, "LBFGS": LBFGS}


@dataclass
class RelaxResult:
    """Outcome of one relaxation.

    atoms: the relaxed structure (a copy; constraints kept; a SinglePointCalculator holds its
    final energy, forces and, with ``cell=True``, stress). energies: potential energy (eV) after
    every step, the initial structure first (``nsteps + 1`` values). fmax: the optimizer's force
    criterion (max force norm, eV/A, constraints applied; with ``cell=True`` including the
    cell's generalised forces) at the same points. error: why the relaxation stopped early
    (``relax_batch`` records a failing structure here instead of aborting the others).
    """

    atoms: Atoms
    energies: list[float] = field(default_factory=list)
    fmax: list[float] = field(default_factory=list)
    converged: bool = False
    nsteps: int = 0
    error: str | None = None

    @property
    def initial_energy(self) -> float:
        return self.energies[0] if self.energies else float("nan")

    @property
    def final_energy(self) -> float:
        return self.energies[-1] if self.energies else float("nan")


class _Recorder:
    """Optimizer observer: energy and force criterion at every step, optional trajectory."""

    def __init__(self, atoms: Atoms, target: Any, trajectory: LazyTrajectory | None) -> None:
        self.atoms = atoms
        self.target = target
        self.trajectory = trajectory
        self.energies: list[float] = []
        self.fmax: list[float] = []

    def __call__(self) -> None:
        self.energies.append(float(self.atoms.get_potential_energy()))
        forces = np.asarray(self.target.get_forces())
        self.fmax.append(float(np.sqrt((forces**2).sum(axis=1)).max()) if len(forces) else 0.0)
        if self.trajectory is not None:
            self.trajectory.write(self.atoms)


@dataclass
class _Relaxation:
    """A prepared relaxation: the working copy, the optimizer and its observer."""

    atoms: Atoms
    optimizer: Optimizer
    recorder: _Recorder
    trajectory: LazyTrajectory | None
    cell: bool

    def result(self, converged: bool, error: str | None = None) -> RelaxResult:
        atoms = self.atoms
        final = atoms.copy()
        results: dict[str, Any] = {}
        calc = atoms.calc
        if calc is not None and error is None:
            results["energy"] = results["free_energy"] = float(atoms.get_potential_energy())
            results["forces"] = atoms.get_forces(apply_constraint=False).copy()
            if self.cell:
                results["stress"] = atoms.get_stress().copy()
        if results:
            final.calc = SinglePointCalculator(final, **results)
        return RelaxResult(
            atoms=final,
            energies=list(self.recorder.energies),
            fmax=list(self.recorder.fmax),
            converged=bool(converged),
            nsteps=int(self.optimizer.nsteps),
            error=error,
        )

    def close(self) -> None:
        if self.trajectory is not None:
            self.trajectory.close()
        self.optimizer.close()


def prepare_relaxation(
    atoms: Atoms,
    calculator: Calculator,
    optimizer: str = "BFGS",
    fix_bottom: int | None = None,
    fix_below: float | None = None,
    cell: bool = False,
    trajectory: str | os.PathLike | None = None,
    logfile: str | os.PathLike | None = None,
    optimizer_kwargs: dict[str, Any] | None = None,
) -> _Relaxation:
    """Copy ``atoms``, add the bottom constraint, attach ``calculator``, build the optimizer (on a
    FrechetCellFilter with ``cell``) and its recording observer. Shared by :func:`relax` and
    :func:`~equiformer_calc.workflows.batch.relax_batch` so both run the very same ASE optimizer."""
    name = optimizer.upper()
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
    work = atoms.copy()
    add_fix_bottom(work, fix_bottom, fix_below)
    work.calc = calculator
    target: Any = work
    if cell:
        if not work.pbc.all():
            raise ValueError(
                f"cell relaxation needs a structure periodic in all three directions (pbc={work.pbc.tolist()})"
            )
        target = FrechetCellFilter(work)
    traj = None if trajectory is None else LazyTrajectory(trajectory, work)  # created at the first frame
    opt = OPTIMIZERS[name](target, logfile=None if logfile is None else str(logfile), **(optimizer_kwargs or {}))
    recorder = _Recorder(work, target, traj)
    opt.attach(recorder, interval=1)
    return _Relaxation(work, opt, recorder, traj, cell)


def relax(
    atoms: Atoms,
    calculator: Any = None,
    fmax: float = 0.05,
    steps: int = 500,
    optimizer: str = "BFGS",
    fix_bottom: int | None = None,
    cell: bool = False,
    trajectory: str | os.PathLike | None = None,
    logfile: str | os.PathLike | None = None,
    fix_below: float | None = None,
    optimizer_kwargs: dict[str, Any] | None = None,
) -> RelaxResult:
    """Relax ``atoms`` (a copy: the input is not modified) until every force is below ``fmax``
    (eV/A) or ``steps`` optimizer steps were taken.

    calculator: the model (see :func:`~equiformer_calc.calculators.local.resolve_calculator`): any
    ASE calculator, a :class:`~equiformer_calc.predictor.Predictor`, a
    :class:`~equiformer_calc.calculators.settings.ModelSettings` (device, dtype, memory mode, ...),
    a checkpoint name or path, or ``None`` for the default shipped checkpoint.
    optimizer: ``"BFGS"``, ``"FIRE"`` or ``"LBFGS"`` (ASE's, with ``optimizer_kwargs``).
    fix_bottom: fix the ``K`` lowest atomic layers (layers = atoms whose Cartesian z differ by
    less than 0.3 A; count from the bottom); fix_below: fix every atom with z below this height
    (A). Both add a FixAtoms constraint; constraints already on ``atoms`` are kept.
    cell: relax the cell too (ASE's FrechetCellFilter; needs 3D periodicity and stress).
    trajectory: ASE .traj file of every step; logfile: the optimizer's log (``"-"``: stdout).
    """
    check_number("fmax", fmax, gt=0)
    check_number("steps", steps, ge=0, integer=True)
    if not cell:  # a cell relaxation of fixed atoms still changes the cell
        check_not_all_fixed(atoms, fix_bottom, fix_below, "the relaxation")
    calc = resolve_calculator(calculator)
    job = prepare_relaxation(atoms, calc, optimizer, fix_bottom, fix_below, cell, trajectory, logfile, optimizer_kwargs)
    try:
        converged = job.optimizer.run(fmax=fmax, steps=steps)
        result = job.result(bool(converged))
    finally:
        job.close()
    log.debug(
        "relax: %s in %d steps, energy %.6f -> %.6f eV",
        "converged" if result.converged else "not converged", result.nsteps, result.initial_energy, result.final_energy,
    )
    return result


def relax_output_paths(stem: Path) -> dict[str, Path]:
    """The files :func:`write_relax_outputs` writes for ``stem``."""
    return {
        "final": stem.with_name(stem.name + "_final.extxyz"),
        "csv": stem.with_name(stem.name + "_energies.csv"),
        "png": stem.with_name(stem.name + "_energies.png"),
    }


def write_relax_outputs(result: RelaxResult, stem: Path) -> dict[str, Path]:
    """``<stem>_final.extxyz``, ``<stem>_energies.csv`` and ``<stem>_energies.png``."""
    from ase.io import write

    paths = relax_output_paths(stem)
    with warnings.catch_warnings():  # ASE skips dict-valued info (e.g. adsorbate_info) with a warning
        warnings.filterwarnings("ignore", message="Skipping unhashable information")
        write(paths["final"], result.atoms, format="extxyz")
    e = np.asarray(result.energies)
    steps = np.arange(len(e))
    write_csv(
        paths["csv"],
        ["step", "energy_eV", "delta_energy_eV", "fmax_eV_per_A"],
        [(k, e[k], e[k] - e[0], f) for k, f in zip(steps, result.fmax)],
    )
    plot_lines(
        paths["png"],
        steps,
        [{"energy": e - e[0]}, {"max force": np.asarray(result.fmax)}],
        "optimizer step",
        ["E - E$_0$ (eV)", "max |F| (eV/Å)"],
        title=f"relaxation: {result.atoms.get_chemical_formula()}, E$_0$ = {e[0]:.4f} eV",
    )
    return paths
