"""Molecular dynamics: NVE (velocity Verlet) or NVT (Langevin) with ASE's integrators.

Python::

    from equiformer_calc import run_md
    md = run_md(atoms, ensemble="nve", temperature=300, timestep=1.0, steps=2000, trajectory="md.traj")
    md.drift_per_atom_per_ps  # eV / atom / ps, linear fit of the total energy

Command line::

    equiformer-calc md slab.extxyz --ensemble nvt --temperature 500 --steps 2000 -o out/md.traj

writes ``out/md.traj`` (every ``--log-interval`` steps), ``out/md_log.csv`` (time, potential,
kinetic and total energy, temperature) and ``out/md_energy.png``, and reports the NVE energy
drift. The neighbour list is reused between steps (``--skin``; identical results, see
:class:`~equiformer_calc.graph.NeighborListCache`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from ..io import progress as tqdm  # live bar on a terminal, plain lines in a log

from ._common import (
    LazyTrajectory,
    add_fix_bottom,
    check_not_all_fixed,
    check_number,
    plot_lines,
    resolve_calculator,
    write_csv,
)

__all__ = ["MDResult", "MD_SKIN", "run_md", "energy_drift", "md_output_paths", "write_md_outputs"]

log = logging.getLogger(__name__)


ENSEMBLES = ("nve", "nvt")
#: the neighbour-list skin (A) of a calculator that :func:`run_md` builds itself
MD_SKIN = 1.0


@dataclass
class MDResult:
    """Outcome of :func:`run_md`. Per-step series (step 0 = the initial state, then every step):
    time (fs), potential / kinetic / total energy (eV) and temperature (K).
    drift_per_atom_per_ps: slope of a least-squares line through the total energy per atom
    against time (eV/atom/ps; meaningful for NVE, where it should be ~0).
    neighbor_builds: neighbour searches done (with a skin; else one per step)."""

    atoms: Atoms
    time_fs: np.ndarray
    potential: np.ndarray
    kinetic: np.ndarray
    temperature: np.ndarray
    ensemble: str
    drift_per_atom_per_ps: float
    neighbor_builds: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> np.ndarray:
        return self.potential + self.kinetic


def energy_drift(time_fs: np.ndarray, total_energy: np.ndarray, natoms: int) -> float:
    """Least-squares slope of total energy per atom against time, in eV/atom/ps."""
    t = np.asarray(time_fs, dtype=float) / 1000.0
    if t.size < 2 or np.ptp(t) == 0:
        return 0.0
    slope = np.polyfit(t, np.asarray(total_energy, dtype=float) / natoms, 1)[0]
    return float(slope)


def run_md(
    atoms: Atoms,
    ensemble: str = "nve",
    temperature: float = 300.0,
    timestep: float = 1.0,
    steps: int = 1000,
    friction: float = 0.01,
    trajectory: str | os.PathLike | None = None,
    log_interval: int = 10,
    seed: int | None = 0,
    calculator: Any = None,
    fix_bottom: int | None = None,
    fix_below: float | None = None,
    init_velocities: bool | None = None,
    progress: bool = True,
) -> MDResult:
    """Run ``steps`` MD steps of ``timestep`` fs on a copy of ``atoms``.

    ensemble: ``"nve"`` (velocity Verlet) or ``"nvt"`` (Langevin at ``temperature`` K with
    ``friction`` in 1/fs; no centre-of-mass constraint). init_velocities: draw Maxwell-Boltzmann
    velocities at ``temperature`` (seeded by ``seed``; centre-of-mass motion removed; rescaled so
    the initial temperature is exactly ``temperature``) -- by default only when ``atoms`` has
    no momenta. The Langevin noise is seeded by ``seed`` too, so runs are reproducible.
    trajectory: ASE .traj written every ``log_interval`` steps (and at the end).
    calculator: the model, as in :func:`~equiformer_calc.workflows.relax.relax` (a calculator,
    predictor, :class:`~equiformer_calc.calculators.settings.ModelSettings`, checkpoint name or
    None). Where the calculator is built here (a name, None, a predictor) it reuses its neighbour
    list with a skin of :data:`MD_SKIN` A (identical numbers, fewer searches); a calculator or a
    ModelSettings is used as given (``settings.replace(skin=...)`` sets it; 0 rebuilds every step).
    fix_bottom / fix_below: as in :func:`~equiformer_calc.workflows.relax.relax`.
    """
    ensemble = ensemble.lower()
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    check_number("steps", steps, ge=0, integer=True)
    check_number("timestep", timestep, gt=0)
    check_number("log_interval", log_interval, ge=1, integer=True)
    check_number("temperature", temperature, ge=0)
    check_number("friction", friction, ge=0)
    check_not_all_fixed(atoms, fix_bottom, fix_below, "the dynamics")
    calc = resolve_calculator(calculator, skin=MD_SKIN)
    work = atoms.copy()
    add_fix_bottom(work, fix_bottom, fix_below)
    work.calc = calc
    rng = np.random.default_rng(seed)
    if init_velocities is None:
        init_velocities = not np.any(work.get_momenta())
    if init_velocities and temperature > 0:
        thermalize_momenta(work, temperature_K=temperature, rng=rng)
        Stationary(work)
        current = work.get_temperature()  # constraints remove degrees of freedom: rescale to T exactly
        if current > 0:
            work.set_momenta(work.get_momenta() * np.sqrt(temperature / current))

    dt = timestep * units.fs
    if ensemble == "nve":
        dyn: Any = VelocityVerlet(work, dt, logfile=None)
    else:
        dyn = Langevin(
            work, dt, temperature_K=temperature, friction=friction / units.fs, rng=rng, logfile=None, fixcm=False
        )

    natoms = len(work)
    series: dict[str, list[float]] = {"t": [], "epot": [], "ekin": [], "temp": []}
    traj = None if trajectory is None else LazyTrajectory(trajectory, work)  # created at the first frame
    bar = tqdm(total=steps, desc=f"md {ensemble}", unit="step", disable=not progress, leave=False)

    def observe() -> None:
        step = dyn.nsteps
        series["t"].append(step * timestep)
        series["epot"].append(float(work.get_potential_energy()))
        series["ekin"].append(float(work.get_kinetic_energy()))
        series["temp"].append(float(work.get_temperature()))
        if traj is not None and (step % log_interval == 0 or step == steps):
            traj.write(work)
        if step > 0:
            bar.update(1)
            if step % max(1, log_interval) == 0:
                bar.set_postfix(T=f"{series['temp'][-1]:.0f}K", epot=f"{series['epot'][-1]:.3f}", refresh=False)

    dyn.attach(observe, interval=1)
    try:
        dyn.run(steps)
        if not series["t"] or series["t"][-1] != steps * timestep:  # ASE versions differ on the initial call
            observe()
    finally:
        bar.close()
        if traj is not None:
            traj.close()
    t = np.asarray(series["t"])
    epot, ekin = np.asarray(series["epot"]), np.asarray(series["ekin"])
    drift = energy_drift(t, epot + ekin, natoms)
    cache = getattr(calc, "neighbor_cache", None)
    builds = cache.builds if cache is not None else None
    if ensemble == "nve":
        log.info("NVE energy drift %.3g meV/atom/ps over %.3g ps", 1e3 * drift, t[-1] / 1000 if t.size else 0.0)
    return MDResult(
        atoms=work,
        time_fs=t,
        potential=epot,
        kinetic=ekin,
        temperature=np.asarray(series["temp"]),
        ensemble=ensemble,
        drift_per_atom_per_ps=drift,
        neighbor_builds=builds,
        info={"timestep_fs": timestep, "temperature_K": temperature, "friction_per_fs": friction, "seed": seed},
    )


def md_output_paths(stem: Path) -> dict[str, Path]:
    """The files :func:`write_md_outputs` writes for ``stem``."""
    return {"csv": stem.with_name(stem.name + "_log.csv"), "png": stem.with_name(stem.name + "_energy.png")}


def write_md_outputs(result: MDResult, stem: Path, log_interval: int) -> dict[str, Path]:
    """``<stem>_log.csv`` (every ``log_interval`` steps) and ``<stem>_energy.png`` (every step)."""
    paths = md_output_paths(stem)
    n = len(result.time_fs)
    rows = [
        (k, result.time_fs[k], result.potential[k], result.kinetic[k], result.total[k], result.temperature[k])
        for k in range(n)
        if k % log_interval == 0 or k == n - 1
    ]
    write_csv(paths["csv"], ["step", "time_fs", "epot_eV", "ekin_eV", "etot_eV", "temperature_K"], rows)
    natoms = len(result.atoms)
    e0 = result.total[0] if n else 0.0
    plot_lines(
        paths["png"],
        result.time_fs / 1000.0,
        [
            {
                "total": (result.total - e0) / natoms,
                "potential": (result.potential - e0) / natoms,
            },
            {"temperature": result.temperature},
        ],
        "time (ps)",
        ["E - E$_{tot}$(0) (eV/atom)", "T (K)"],
        title=(
            f"{result.ensemble.upper()} MD of {result.atoms.get_chemical_formula()}: drift "
            f"{1e3 * result.drift_per_atom_per_ps:.3g} meV/atom/ps"
        ),
    )
    return paths
