"""i-PI: the real ``i-pi`` server on a generated input.xml, our client (``equiformer-calc ipi``)
answering it; i-PI's reported step-0 potential (and virial, for the periodic cell under NPT) must
equal our calculator's numbers for the same structure."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from ase import units
from ase.geometry import cellpar_to_cell
from ase.io import write

from equiformer_calc.calculators.local import EquiformerCalculator
from equiformer_calc.checkpoint import save_checkpoint
from equiformer_calc.cli import main as cli_main

from ..helpers import bulk_cell, make_model, slab_with_adsorbate

I_PI = shutil.which("i-pi") or str(Path(sys.executable).with_name("i-pi"))
pytestmark = [
    pytest.mark.skipif(not Path(I_PI).exists(), reason="the [ipi] extra (i-PI) is not installed"),
    pytest.mark.slow,
]



def in_ipi_units(value: float | np.ndarray, kind: str) -> float | np.ndarray:
    """An ASE-unit number (eV or eV/A^3) as i-PI prints it in eV or GPa: it travels over the
    socket in Hartree atomic units converted with ASE's constants and is printed with i-PI's
    (which differ in the 8th digit: 31 eV come out 3e-6 eV apart without this)."""
    from ipi.utils.units import unit_to_internal

    if kind == "energy":
        return value / units.Hartree / unit_to_internal("energy", "electronvolt", 1.0)
    hartree_per_bohr3 = value / (units.Hartree / units.Bohr**3)
    return hartree_per_bohr3 / unit_to_internal("pressure", "gigapascal", 1.0)

MOTION = {
    "nvt": """<dynamics mode='nvt'><timestep units='femtosecond'> 0.5 </timestep>
             <thermostat mode='langevin'><tau units='femtosecond'> 50 </tau></thermostat></dynamics>""",
    "npt": """<dynamics mode='npt'><timestep units='femtosecond'> 0.5 </timestep>
             <thermostat mode='langevin'><tau units='femtosecond'> 50 </tau></thermostat>
             <barostat mode='isotropic'><tau units='femtosecond'> 100 </tau>
               <thermostat mode='langevin'><tau units='femtosecond'> 50 </tau></thermostat></barostat></dynamics>""",
}


def input_xml(socket: str, ensemble: str, steps: int) -> str:
    pressure = "<pressure units='megapascal'> 10 </pressure>" if ensemble == "npt" else ""
    return f"""<simulation verbosity='low'>
  <output prefix='sim'>
    <properties stride='1' filename='out'> [ step, potential{{electronvolt}}, virial_md{{gigapascal}}, volume{{angstrom3}} ] </properties>
  </output>
  <total_steps> {steps} </total_steps>
  <prng><seed> 7 </seed></prng>
  <ffsocket name='eqc' mode='unix' pbc='false'><address> {socket} </address><latency> 1e-4 </latency></ffsocket>
  <system>
    <initialize nbeads='1'>
      <file mode='ase'> init.extxyz </file>
      <velocities mode='thermal' units='kelvin'> 300 </velocities>
    </initialize>
    <forces><force forcefield='eqc'/></forces>
    <motion mode='dynamics'>{MOTION[ensemble]}</motion>
    <ensemble><temperature units='kelvin'> 300 </temperature>{pressure}</ensemble>
  </system>
</simulation>
"""


def run_ipi(tmp_path: Path, atoms, model, ensemble: str, steps: int = 3) -> np.ndarray:
    """Run i-pi with our client on ``atoms``; returns the rows of i-PI's properties file."""
    ckpt = save_checkpoint(model, tmp_path / "tiny.safetensors")
    ipi_atoms = atoms.copy()
    ipi_atoms.pbc = True  # i-PI's cell is always periodic; the client keeps the structure's own pbc
    write(tmp_path / "init.extxyz", ipi_atoms, format="extxyz")
    write(tmp_path / "structure.extxyz", atoms, format="extxyz")
    socket = f"eqc-{uuid.uuid4().hex[:10]}"
    (tmp_path / "input.xml").write_text(input_xml(socket, ensemble, steps))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "ipi.log", "w") as logfile:
        server = subprocess.Popen([I_PI, "input.xml"], cwd=tmp_path, stdout=logfile, stderr=subprocess.STDOUT, env=env)
        try:
            rc = cli_main(["ipi", str(tmp_path / "structure.extxyz"), "--unix", socket, "--checkpoint", str(ckpt),
                           "--dtype", "float64", "--wait", "60"])
            assert rc == 0
            assert server.wait(timeout=120) == 0, (tmp_path / "ipi.log").read_text()[-3000:]
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    return np.loadtxt(tmp_path / "sim.out", ndmin=2)


def test_ipi_step0_potential_of_a_slab_equals_our_energy(tmp_path):
    model = make_model(0)
    atoms = slab_with_adsorbate()
    rows = run_ipi(tmp_path, atoms, model, "nvt")
    assert rows[:, 0].tolist() == [0, 1, 2, 3]
    calc = EquiformerCalculator(model=model, dtype="float64")
    atoms.calc = calc
    assert rows[0, 1] == pytest.approx(in_ipi_units(atoms.get_potential_energy(), "energy"), abs=2e-7)
    assert len(set(np.round(rows[:, 1], 8))) > 1  # the atoms moved: i-PI integrated with our forces
    np.testing.assert_array_equal(rows[:, 2:8], 0.0)  # no virial for a slab


def test_ipi_npt_receives_our_virial(tmp_path):
    model = make_model(0)
    atoms = bulk_cell()
    # i-PI turns a cell so that a lies along x and b in the xy plane; start in that frame so that
    # our stress and i-PI's virial are in the same axes
    atoms.set_cell(cellpar_to_cell(atoms.cell.cellpar()), scale_atoms=True)
    rows = run_ipi(tmp_path, atoms, model, "npt")
    calc = EquiformerCalculator(model=model, dtype="float64")
    atoms.calc = calc
    assert rows[0, 1] == pytest.approx(in_ipi_units(atoms.get_potential_energy(), "energy"), abs=2e-7)
    # i-PI's virial_md = virial / V = -stress, in the order xx yy zz xy xz yz
    s = atoms.get_stress()  # xx yy zz yz xz xy
    expected = in_ipi_units(-np.array([s[0], s[1], s[2], s[5], s[4], s[3]]), "pressure")
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(rows[0, 2:8], expected, rtol=2e-8, atol=1e-8)  # i-PI prints 9 digits
    assert rows[-1, 8] != pytest.approx(rows[0, 8], abs=1e-9)  # the barostat moved the cell
