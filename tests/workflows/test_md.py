"""``workflows.md``: NVE drift, NVT reproducibility, the ``md`` command, neighbour-list skin reuse."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from ase.io import read, write

from equiformer_calc import EquiformerCalculator, run_md
from equiformer_calc.cli import main as cli_main

from ..helpers import bulk_cell
from .shared import small_slab


def test_nve_energy_drift_is_small(calc64):
    res = run_md(small_slab(), calculator=calc64, ensemble="nve", temperature=300, timestep=0.5, steps=80,
                 fix_bottom=1, progress=False)
    assert len(res.time_fs) == 81 and res.time_fs[-1] == pytest.approx(40.0)
    assert res.temperature[0] == pytest.approx(300, rel=1e-6)  # initial velocities rescaled to T
    assert np.ptp(res.total) < 2e-3
    assert abs(res.drift_per_atom_per_ps) < 1e-3  # eV/atom/ps


def test_nvt_runs_and_is_reproducible(model, tmp_path):
    kwargs = dict(ensemble="nvt", temperature=500, timestep=1.0, steps=25, friction=0.05, seed=7,
                  fix_bottom=1, progress=False, log_interval=5)
    a = run_md(small_slab(), calculator=EquiformerCalculator(model=model), trajectory=tmp_path / "a.traj", **kwargs)
    b = run_md(small_slab(), calculator=EquiformerCalculator(model=model), **kwargs)
    np.testing.assert_array_equal(a.atoms.positions, b.atoms.positions)
    assert np.all(np.isfinite(a.temperature)) and a.temperature.mean() > 50
    assert len(read(tmp_path / "a.traj", ":")) == 6  # steps 0, 5, ..., 25


def test_cli_md_writes_outputs(checkpoint, tmp_path):
    src = tmp_path / "slab.extxyz"
    write(src, small_slab())
    out = tmp_path / "md.traj"
    assert cli_main(["md", str(src), "--checkpoint", checkpoint, "--ensemble", "nve", "--steps", "10",
                     "--timestep", "0.5", "--log-interval", "5", "--fix-bottom", "1", "-o", str(out)]) == 0
    assert len(read(out, ":")) == 3
    with open(tmp_path / "md_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 5, 10]
    assert set(rows[0]) >= {"time_fs", "epot_eV", "ekin_eV", "etot_eV", "temperature_K"}
    assert (tmp_path / "md_energy.png").stat().st_size > 1000


def test_md_with_skin_equals_rebuilding_every_step(model):
    """Same trajectory to 1e-10 (float64) with the neighbour list reused between steps."""
    runs = {}
    for skin in (0.0, 0.3):
        calc = EquiformerCalculator(model=model, dtype="float64", skin=skin)
        runs[skin] = run_md(bulk_cell(), calculator=calc, ensemble="nve", temperature=1500, timestep=2.0, steps=25,
                            progress=False)
    a, b = runs[0.0], runs[0.3]
    assert a.neighbor_builds is None and 1 < b.neighbor_builds < 25  # reused, and rebuilt when needed
    np.testing.assert_allclose(b.potential, a.potential, rtol=0, atol=1e-10)
    np.testing.assert_allclose(b.atoms.positions, a.atoms.positions, rtol=0, atol=1e-10)
