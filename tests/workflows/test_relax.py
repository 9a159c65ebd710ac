"""``workflows.relax``: optimizers, constraints, cell relaxation, the ``relax`` command."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from ase.build import add_adsorbate, bulk, fcc111
from ase.constraints import FixAtoms
from ase.io import read, write

from equiformer_calc import relax
from equiformer_calc.cli import main as cli_main
from equiformer_calc.surfaces import bottom_fixed_mask, layer_indices

from .shared import small_slab


@pytest.mark.parametrize("optimizer", ["BFGS", "FIRE", "LBFGS"])
def test_relax_optimizers(calc64, optimizer):
    atoms = small_slab()
    before = atoms.positions.copy()
    res = relax(atoms, calculator=calc64, optimizer=optimizer, fmax=0.05, steps=150, fix_bottom=1)
    assert res.converged and 0 < res.nsteps < 150
    assert len(res.energies) == len(res.fmax) == res.nsteps + 1
    assert res.final_energy < res.initial_energy
    assert res.fmax[-1] < 0.05
    np.testing.assert_array_equal(atoms.positions, before)  # the input is not modified
    assert res.atoms.get_potential_energy() == pytest.approx(res.final_energy)
    bottom = layer_indices(atoms.positions[:, 2]) == 0
    assert bottom.sum() == 4
    np.testing.assert_array_equal(res.atoms.positions[bottom], before[bottom])  # fixed layer stayed
    assert np.abs(res.atoms.positions[~bottom] - before[~bottom]).max() > 1e-3


def test_fix_bottom_layers_and_height():
    atoms = fcc111("Cu", (2, 2, 4), vacuum=5.0)
    add_adsorbate(atoms, "O", 1.8, "fcc")
    z = atoms.positions[:, 2]
    assert layer_indices(z).max() == 4  # 4 metal layers + the adsorbate
    assert bottom_fixed_mask(atoms, fix_bottom=2).sum() == 8
    assert bottom_fixed_mask(atoms, fix_bottom=0).sum() == 0
    assert bottom_fixed_mask(atoms, fix_below=z.min() + 0.1).sum() == 4
    with pytest.raises(ValueError, match="number of layers"):
        bottom_fixed_mask(atoms, fix_bottom=1.5)


def test_relax_keeps_existing_constraints(calc64):
    atoms = small_slab()
    atoms.set_constraint(FixAtoms(indices=[len(atoms) - 1]))  # hold the adsorbate
    res = relax(atoms, calculator=calc64, steps=20, fix_bottom=1)
    np.testing.assert_array_equal(res.atoms.positions[-1], atoms.positions[-1])
    assert len(res.atoms.constraints) == 2


def test_relax_cell(calc64, tmp_path):
    atoms = bulk("Cu", "fcc", a=3.5)
    atoms.set_cell(atoms.cell.array @ np.array([[1.02, 0.01, 0.0], [0.0, 0.99, 0.0], [0.0, 0.0, 1.0]]), scale_atoms=True)
    res = relax(atoms, calculator=calc64, cell=True, fmax=0.05, steps=200, trajectory=tmp_path / "cell.traj")
    assert res.converged
    assert not np.allclose(res.atoms.cell.array, atoms.cell.array)
    # FrechetCellFilter's cell "forces" are the virial over the number of atoms
    assert np.abs(res.atoms.get_stress()).max() * res.atoms.get_volume() / len(atoms) < 0.05
    frames = read(tmp_path / "cell.traj", ":")
    assert len(frames) == res.nsteps + 1
    assert frames[-1].get_potential_energy() == pytest.approx(res.final_energy)
    with pytest.raises(ValueError, match="periodic in all three"):
        relax(small_slab(), calculator=calc64, cell=True)


@pytest.mark.parametrize("fmt", ["vasp", "extxyz"])
def test_cli_relax_writes_outputs(checkpoint, tmp_path, fmt):
    src = tmp_path / ("POSCAR" if fmt == "vasp" else "in.extxyz")
    write(src, small_slab(), format=fmt)
    out = tmp_path / "run" / "out.traj"
    rc = cli_main(["relax", str(src), "--checkpoint", checkpoint, "--fix-bottom", "1", "--steps", "15",
                   "--optimizer", "fire", "-o", str(out)])
    assert rc == 0
    frames = read(out, ":")
    final = read(tmp_path / "run" / "out_final.extxyz")
    assert final.get_potential_energy() == pytest.approx(frames[-1].get_potential_energy())
    with open(tmp_path / "run" / "out_energies.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(frames) and float(rows[-1]["energy_eV"]) == pytest.approx(final.get_potential_energy())
    assert (tmp_path / "run" / "out_energies.png").read_bytes()[:4] == b"\x89PNG"
