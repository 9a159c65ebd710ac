"""Batched finite-difference vibrations against ASE's own ``ase.vibrations.Vibrations`` (float64)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import add_adsorbate, fcc111, molecule
from ase.constraints import FixAtoms
from ase.vibrations import Vibrations

from equiformer_calc import EquiformerCalculator
from equiformer_calc.workflows.vibrations import adsorbate_indices, vibrate, vibrate_many

from ..helpers import make_model


@pytest.fixture(scope="module")
def calc():
    return EquiformerCalculator(model=make_model(2), dtype="float64")


def co_slab():
    slab = fcc111("Cu", (2, 2, 2), vacuum=5.0)
    add_adsorbate(slab, "C", 1.9, "ontop")
    add_adsorbate(slab, "O", 3.05, "ontop")
    slab.set_constraint(FixAtoms(indices=list(range(8))))
    slab.rattle(0.02, seed=1)
    return slab


def _ase_frequencies(atoms, calc, indices, tmp_path, nfree=2):
    atoms = atoms.copy()
    atoms.calc = calc
    vib = Vibrations(atoms, indices=indices, delta=0.01, nfree=nfree, name=str(tmp_path / f"vib{nfree}"))
    vib.run()
    e = vib.get_energies()
    f = np.asarray(vib.get_frequencies())
    real = np.where(np.abs(f.imag) > np.abs(f.real), -np.abs(f.imag), f.real)
    return np.sort(real), e


@pytest.mark.parametrize("nfree", [2, 4])
def test_equals_ase_vibrations(calc, tmp_path, nfree):
    atoms = co_slab()
    indices = adsorbate_indices(atoms)
    assert indices == [8, 9]
    ours = vibrate(atoms, calculator=calc, nfree=nfree, progress=False)
    theirs, _ = _ase_frequencies(atoms, calc, indices, tmp_path, nfree)
    assert ours.indices == indices
    np.testing.assert_allclose(ours.frequencies, theirs, atol=0.5)
    assert ours.n_calls == 1  # every displacement in one batched call


def test_batched_not_one_by_one(calc):
    calls = []
    predict = calc.predict

    def spy(structures, properties=("energy", "forces")):
        calls.append(len(structures))
        return predict(structures, properties)

    calc.predict = spy
    try:
        vibrate_many([co_slab(), molecule("CO")], calculator=calc, progress=False)
    finally:
        del calc.predict
    # 1 + 2 atoms x 3 axes x 2 displacements for the slab, 1 + 12 for CO: one call
    assert calls == [13 + 13]


def test_mask_and_gas_molecule(calc, tmp_path):
    h2o = molecule("H2O")
    ours = vibrate(h2o, indices=np.ones(3, bool), calculator=calc, progress=False)
    theirs, _ = _ase_frequencies(h2o, calc, [0, 1, 2], tmp_path)
    np.testing.assert_allclose(ours.frequencies, theirs, atol=0.5)
    assert len(ours.frequencies) == 9
    assert ours.zero_point_energy > 0
    path = ours.write_csv(tmp_path / "modes.csv")
    assert len(path.read_text().splitlines()) == 10


def test_imaginary_mode_reported(tmp_path):
    """Linear water is a saddle of the bend: the shipped model gives imaginary bending modes, reported
    as negative frequencies and in the notes, and ASE's Vibrations agrees."""
    calc = EquiformerCalculator(dtype="float64")
    linear = molecule("H2O")
    linear.positions = [[0, 0, 0], [0.97, 0, 0], [-0.97, 0, 0]]
    res = vibrate(linear, calculator=calc, progress=False)
    # the degenerate bend (120i cm^-1 with the shipped model), far above the noise of free rotations (< 1i)
    assert (res.frequencies < -50).sum() == 2
    assert any("imaginary" in n for n in res.notes)
    theirs, _ = _ase_frequencies(linear, calc, [0, 1, 2], tmp_path)
    np.testing.assert_allclose(res.frequencies, theirs, atol=0.5)


def test_bad_input(calc):
    atoms = co_slab()
    with pytest.raises(ValueError, match="empty"):
        vibrate(atoms, indices=[], calculator=calc, progress=False)
    with pytest.raises(ValueError, match="out of range"):
        vibrate(atoms, indices=[99], calculator=calc, progress=False)
    with pytest.raises(ValueError, match="nfree"):
        vibrate(atoms, calculator=calc, nfree=3, progress=False)
    with pytest.raises(ValueError, match="no adsorbate"):
        vibrate(fcc111("Cu", (2, 2, 2), vacuum=5.0), calculator=calc, progress=False)


def test_any_ase_calculator(tmp_path):
    """A calculator without batched predict (here ASE's EMT) is evaluated one structure at a time, with
    the same numbers as ASE's Vibrations."""
    from ase.calculators.emt import EMT

    atoms = fcc111("Cu", (2, 2, 2), vacuum=5.0)
    add_adsorbate(atoms, "O", 1.3, "fcc")
    res = vibrate(atoms, calculator=EMT(), progress=False)
    theirs, _ = _ase_frequencies(atoms, EMT(), [8], tmp_path)
    np.testing.assert_allclose(res.frequencies, theirs, atol=0.01)
    assert res.n_calls == 7


def test_journal_skips_finished_work(calc, tmp_path):
    path = tmp_path / "vib.jsonl"
    systems = [co_slab(), molecule("CO")]
    first = vibrate_many(systems, calculator=calc, journal=path, keys=["slab", "co"], chunk_size=1, progress=False)
    assert len(path.read_text().splitlines()) == 2  # one line per finished chunk of one structure
    with open(path, "a") as f:
        f.write('{"key": "other", "hess')  # cut by a kill: ignored
    calls = []
    predict = calc.predict
    calc.predict = lambda s, properties=("energy", "forces"): calls.append(len(s)) or predict(s, properties)
    try:
        again = vibrate_many(systems, calculator=calc, journal=path, keys=["slab", "co"], progress=False)
        more = vibrate_many([*systems, molecule("H2")], calculator=calc, journal=path, keys=["slab", "co", "h2"],
                            progress=False)
    finally:
        del calc.predict
    assert calls == [13]  # only H2 (1 + 2 atoms x 3 x 2) was computed
    for a, b in zip(first, again):
        np.testing.assert_allclose(a.frequencies, b.frequencies, atol=1e-9)
    assert len(more) == 3
    lines = path.read_text().splitlines()  # the cut line was removed before H2's was appended
    assert len(lines) == 3 and all(line.startswith('{"key": "') for line in lines)
    with pytest.raises(ValueError, match="one key per structure"):
        vibrate_many(systems, calculator=calc, journal=path, progress=False)
