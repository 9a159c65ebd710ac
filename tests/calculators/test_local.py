"""The ASE calculator: finite differences, ASE workflows, state handling, errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.constraints import FixAtoms
from ase.filters import FrechetCellFilter
from ase.md.langevin import Langevin
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS, FIRE, LBFGS

from equiformer_calc.calculators.local import EquiformerCalculator
from equiformer_calc.graph import StructureError
from equiformer_calc.model import UnknownElementError

from ..equivariance import assert_equivariant
from ..helpers import SYSTEMS, bulk_cell, make_model, slab_with_adsorbate


@pytest.fixture(scope="module")
def calc64():
    return EquiformerCalculator(model=make_model(0), dtype="float64")


def test_forces_match_finite_differences(calc64, system):
    atoms = system
    atoms.calc = calc64
    f = atoms.get_forces()
    fd = calculate_numerical_forces(atoms, eps=1e-4)
    assert np.abs(f).max() > 1e-2
    np.testing.assert_allclose(f, fd, atol=1e-6 * max(1.0, np.abs(f).max()))


def test_calculator_is_equivariant(calc64, system):
    """Through ASE's interface: energy invariant, forces and stress equivariant under rotations,
    reflections, translations and permutations (the shared check of tests/equivariance.py)."""

    def results(atoms):
        atoms.calc = calc64
        out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        if atoms.pbc.all():
            out["stress"] = atoms.get_stress()
        return out

    assert_equivariant(results, system, rtol=1e-9)


def test_stress_matches_finite_differences(calc64):
    atoms = bulk_cell()
    atoms.calc = calc64
    s = atoms.get_stress()
    fd = calculate_numerical_stress(atoms, eps=1e-5)
    assert np.abs(s).max() > 1e-3
    np.testing.assert_allclose(s, fd, atol=1e-7)


def test_per_atom_energies_sum_to_total(calc64, system):
    system.calc = calc64
    assert np.isclose(system.get_potential_energies().sum(), system.get_potential_energy(), atol=1e-9)
    assert system.get_potential_energy(force_consistent=True) == system.get_potential_energy()


def test_stress_of_non_periodic_system_is_a_clear_error(calc64):
    atoms = slab_with_adsorbate()  # pbc = [T, T, F]
    atoms.calc = calc64
    with pytest.raises(PropertyNotImplementedError, match="periodic in all three"):
        atoms.get_stress()


def test_check_state_recomputes_only_on_change(calc64):
    atoms = molecule("H2O")
    atoms.calc = calc64
    calls = []
    original = calc64.predictor.predict
    calc64.predictor.predict = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        atoms.get_potential_energy()
        atoms.get_forces()
        atoms.get_potential_energy()
        assert len(calls) == 1
        atoms.positions[0, 0] += 0.01
        atoms.get_forces()
        assert len(calls) == 2
        atoms.set_atomic_numbers([8, 1, 8])
        atoms.get_potential_energy()
        assert len(calls) == 3
    finally:
        calc64.predictor.predict = original


def test_predict_batch_equals_one_by_one(calc64):
    structures = [f() for f in SYSTEMS.values()] + [bulk("Pt", "fcc", a=3.92) * (2, 1, 1)]
    batched = calc64.predict(structures, properties=["energy", "forces"])
    for atoms, res in zip(structures, batched):
        atoms.calc = calc64
        assert abs(atoms.get_potential_energy() - res["energy"]) < 1e-10
        np.testing.assert_allclose(atoms.get_forces(), res["forces"], atol=1e-10)


def test_optimizers_and_constraints():
    calc = EquiformerCalculator(model=make_model(0), dtype="float64")
    for opt_cls in (BFGS, LBFGS, FIRE):
        atoms = slab_with_adsorbate()
        fixed = [a.index for a in atoms if a.tag >= 2]  # bottom layers
        atoms.set_constraint(FixAtoms(indices=fixed))
        start = atoms.positions.copy()
        atoms.calc = calc
        e0 = atoms.get_potential_energy()
        opt = opt_cls(atoms, logfile=None)
        opt.run(fmax=0.05, steps=30)
        assert atoms.get_potential_energy() < e0
        np.testing.assert_array_equal(atoms.positions[fixed], start[fixed])
        assert np.abs(atoms.get_forces()[fixed]).max() == 0.0  # ASE applies FixAtoms to forces


def test_cell_filter_relaxation():
    atoms = bulk("Cu", "fcc", a=3.7) * (2, 1, 1)
    atoms.rattle(0.02, seed=0)
    atoms.calc = EquiformerCalculator(model=make_model(0), dtype="float64")
    filt = FrechetCellFilter(atoms)
    e0 = atoms.get_potential_energy()
    cell0 = atoms.cell.array.copy()
    assert np.abs(filt.get_forces()).max() > 5e-3
    BFGS(filt, logfile=None).run(fmax=1e-3, steps=30)
    assert atoms.get_potential_energy() < e0
    assert np.abs(atoms.cell.array - cell0).max() > 1e-4  # the cell itself was relaxed


def test_nve_md_conserves_energy():
    """100 steps of velocity Verlet: total energy fluctuates but does not drift."""
    atoms = slab_with_adsorbate()
    atoms.calc = EquiformerCalculator(model=make_model(0), dtype="float64")
    rng = np.random.default_rng(0)
    masses = atoms.get_masses()[:, None]
    atoms.set_momenta(rng.normal(size=(len(atoms), 3)) * np.sqrt(masses * units.kB * 300))
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_total_energy()), interval=1)
    dyn.run(100)
    energies = np.array(energies)
    kinetic = atoms.get_kinetic_energy()
    assert kinetic > 0.01
    assert np.ptp(energies) < 2e-3 * len(atoms), np.ptp(energies)
    assert abs(energies[-10:].mean() - energies[:10].mean()) < 1e-3 * len(atoms)


def test_langevin_runs():
    atoms = slab_with_adsorbate()
    atoms.calc = EquiformerCalculator(model=make_model(0))
    dyn = Langevin(atoms, timestep=1.0 * units.fs, temperature_K=500, friction=0.02, rng=np.random.default_rng(0))
    dyn.run(10)
    assert np.isfinite(atoms.get_potential_energy())


def test_copy_and_pickle(calc64):
    atoms = slab_with_adsorbate()
    atoms.calc = calc64
    e = atoms.get_potential_energy()
    clone = pickle.loads(pickle.dumps(calc64))
    copy = atoms.copy()
    assert copy.calc is None  # ASE convention: copies do not share the calculator
    copy.calc = clone
    assert abs(copy.get_potential_energy() - e) < 1e-10
    assert clone.parameters["dtype"] == "float64" and clone.model.elements == calc64.model.elements


@pytest.mark.parametrize(
    "atoms, match",
    [
        (Atoms(), "no atoms"),
        (Atoms("H2", positions=[[0, 0, 0], [np.nan, 0, 0]]), "NaN or inf"),
        (Atoms("H2", positions=[[0, 0, 0], [np.inf, 0, 0]]), "NaN or inf"),
        (Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]], pbc=True), "cell vector 0 is zero"),
        (Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]], cell=[[1, 0, 0], [2, 0, 0], [0, 0, 3]], pbc=True), "degenerate"),
        (Atoms("H2", positions=[[0, 0, 0], [0.0, 0, 0.01]]), "overlap"),
    ],
)
def test_bad_structures_give_named_errors(calc64, atoms, match):
    atoms.calc = calc64
    with pytest.raises(StructureError, match=match):
        atoms.get_potential_energy()


def test_unknown_element_error_lists_supported(calc64):
    atoms = molecule("SiH4")
    atoms.calc = calc64
    with pytest.raises(UnknownElementError, match=r"element\(s\) Si not supported.*supports H, C, N, O, Al"):
        atoms.get_potential_energy()


def test_dtype_and_model_arguments():
    with pytest.raises(ValueError, match="dtype"):
        EquiformerCalculator(model=make_model(0), dtype="float16")
    with pytest.raises(ValueError, match="either"):
        EquiformerCalculator(model=make_model(0), checkpoint="x")


# ------------------------------------------------------------------- settings are ASE parameters
def test_settings_are_parameters_recorded_by_ase_db_and_trajectories(tmp_path):
    """``todict()`` names the checkpoint and its sha256; an ``ase db`` row and a trajectory frame
    written with the calculator carry them back."""
    import hashlib

    import ase.db
    from ase.io import Trajectory

    from equiformer_calc.checkpoint import load_checkpoint, save_checkpoint

    path = save_checkpoint(make_model(0), tmp_path / "mine.safetensors")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    calc = EquiformerCalculator(checkpoint=str(path), dtype="float64", skin=0.5)
    params = calc.todict()
    assert params["checkpoint"] == str(path) and params["checkpoint_sha256"] == digest
    assert (params["dtype"], params["skin"], params["memory"], params["dispersion"]) == ("float64", 0.5, "auto", None)
    atoms = slab_with_adsorbate()
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    with ase.db.connect(tmp_path / "runs.db") as db:
        row_id = db.write(atoms)
    row = ase.db.connect(tmp_path / "runs.db").get(id=row_id)
    assert row.calculator == "equiformercalculator"
    assert row.calculator_parameters["checkpoint"] == str(path)
    assert row.calculator_parameters["checkpoint_sha256"] == digest
    assert row.energy == energy
    with Trajectory(str(tmp_path / "run.traj"), "w") as traj:
        traj.write(atoms)
    frame = Trajectory(str(tmp_path / "run.traj"))[0]
    assert frame.calc.parameters["checkpoint_sha256"] == digest and frame.get_potential_energy() == energy
    # a model passed in records the name of the checkpoint it was loaded from (None when built in memory)
    assert EquiformerCalculator(model=load_checkpoint(path)).todict()["checkpoint"] == "mine"
    assert EquiformerCalculator(model=make_model(0)).todict()["checkpoint"] is None
    # the recorded digest pins the file: another checkpoint under that name is refused
    from equiformer_calc.checkpoint import CheckpointError

    assert EquiformerCalculator(checkpoint=str(path), checkpoint_sha256=digest).todict()["checkpoint_sha256"] == digest
    save_checkpoint(make_model(1), path)
    with pytest.raises(CheckpointError, match="not the checkpoint_sha256"):
        EquiformerCalculator(checkpoint=str(path), checkpoint_sha256=digest)


def test_set_changes_settable_parameters_and_refuses_the_rest():
    atoms = bulk_cell()
    calc = EquiformerCalculator(model=make_model(0), dtype="float64")
    atoms.calc = calc
    e0 = atoms.get_potential_energy()
    assert calc.set(skin=0.7) == {"skin": 0.7} and calc.neighbor_cache is not None
    assert atoms.get_potential_energy() == e0  # a skin changes no number
    calc.set(max_atoms_per_batch=16, min_distance_ratio=0.1)
    assert (calc.predictor.max_atoms_per_batch, calc.predictor.min_distance_ratio) == (16, 0.1)
    assert calc.set(dtype="float64") == {}  # the same value is no change
    with pytest.raises(ValueError, match="dtype cannot be changed on a built EquiformerCalculator"):
        calc.set(dtype="float32")
    with pytest.raises(TypeError, match="unknown parameter\\(s\\) 'chekpoint'"):
        calc.set(chekpoint="emt-small")
    with pytest.raises(ValueError, match="skin must be >= 0"):
        calc.set(skin=-1.0)
    assert calc.parameters["skin"] == 0.7 and calc.parameters["dtype"] == "float64"
