"""Short-range repulsion (ZBL pair term).

Issue 11, failure 4: the learned model had no repulsion (Cu2 at 1.0 A pulled together, 0.3 A cost
1.35 eV). A model built with the default config now carries the switched ZBL term; these tests
check its values against the closed formula, that it is exactly absent beyond its switch distance
and for configs written before it existed, that dimer scans are repulsive with forces pushing
apart, that forces and stress include it (finite differences, float64), and that the trainer fits the
network to the labels minus it. The element-aware distance floor: tests/graph/test_distance_floor.py.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import atomic_numbers, covalent_radii

from equiformer_calc.calculators.local import EquiformerCalculator
from equiformer_calc.checkpoint import load_checkpoint, save_checkpoint
from equiformer_calc.graph import build_graph, structure_from_atoms
from equiformer_calc.model import Equiformer, EquiformerConfig
from equiformer_calc.predictor import Predictor
from equiformer_calc.train.data import samples_from_atoms
from equiformer_calc.train.trainer import fit_energy_references

from ..helpers import ELEMENTS, SYSTEMS, make_model


def zbl_reference(z1: int, z2: int, r: np.ndarray, ratio: float = 0.75, p: int = 6) -> np.ndarray:
    """The ZBL universal screened Coulomb potential times the polynomial switch, from the formula."""
    a = 0.8854 * 0.529177210903 / (z1**0.23 + z2**0.23)
    x = r / a
    phi = 0.18175 * np.exp(-3.1998 * x) + 0.50986 * np.exp(-0.94229 * x) + 0.28022 * np.exp(-0.4029 * x)
    phi += 0.02817 * np.exp(-0.20162 * x)
    u = r / (ratio * (covalent_radii[z1] + covalent_radii[z2]))
    env = 1 - (p + 1) * (p + 2) / 2 * u**p + p * (p + 2) * u ** (p + 1) - p * (p + 1) / 2 * u ** (p + 2)
    return 14.399645478425668 * z1 * z2 / r * phi * np.where(u < 1, env, 0.0)


def without_pair(model: Equiformer) -> Equiformer:
    """The same network and weights with ``pair_repulsion=None``."""
    plain = Equiformer.from_config({**model.config.to_dict(), "pair_repulsion": None})
    plain.load_state_dict(model.state_dict())
    return plain


def dimer(symbol: str, r: float) -> Atoms:
    return Atoms(symbol + "2", positions=[[0.0, 0.0, 0.0], [r, 0.0, 0.0]])


@pytest.fixture(scope="module")
def model() -> Equiformer:
    return make_model(0)


def test_new_configs_have_zbl_and_old_ones_do_not(model):
    assert EquiformerConfig(elements=["Cu"]).pair_repulsion == "zbl"
    assert model.pair is not None and model.config.to_dict()["pair_repulsion"] == "zbl"
    legacy = {k: v for k, v in model.config.to_dict().items() if not k.startswith("pair_repulsion")}
    assert EquiformerConfig.from_dict(legacy).pair_repulsion is None
    # both shipped checkpoints were trained with it (emt-small since its retrain with stress)
    for name in ("emt-small", "pbe-distilled-small"):
        shipped = load_checkpoint(name)
        assert shipped.metadata["config"]["pair_repulsion"] == "zbl" and shipped.pair is not None
    with pytest.raises(ValueError, match="pair_repulsion"):
        Equiformer(elements=["Cu"], pair_repulsion="lj")


def test_pair_term_adds_nothing_to_the_state_and_survives_a_checkpoint(model, tmp_path):
    assert set(model.state_dict()) == set(without_pair(model).state_dict())
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(path)
    assert loaded.config.pair_repulsion == "zbl"
    atoms = dimer("Cu", 1.2)
    e = [EquiformerCalculator(model=m, dtype="float64", min_distance_ratio=0).get_potential_energy(atoms)
         for m in (model, loaded)]
    assert e[0] == e[1]


@pytest.mark.parametrize("pair", [("Cu", "Cu"), ("H", "H"), ("C", "O"), ("H", "Pt")])
def test_pair_energy_is_the_switched_zbl_formula(model, pair):
    z1, z2 = atomic_numbers[pair[0]], atomic_numbers[pair[1]]
    r_s = 0.75 * (covalent_radii[z1] + covalent_radii[z2])
    rs = np.linspace(0.25, 1.2, 12) * r_s  # from above the 0.1 A overlap check
    got = []
    for r in rs:
        atoms = Atoms(numbers=[z1, z2], positions=[[0, 0, 0], [r, 0, 0]])
        g = build_graph(structure_from_atoms(atoms), model.cutoff)
        got.append(float(model.pair_energy(g.numbers, g.positions, g.edge_index, g.shifts, g.cell, g.batch, 1)[0]))
    np.testing.assert_allclose(got, zbl_reference(z1, z2, rs), rtol=1e-12, atol=1e-300)
    assert got[-1] == 0.0 and got[-3] == 0.0  # beyond r_s


def test_no_close_pair_means_bitwise_the_numbers_without_the_term(model):
    """Away from short range the term takes no part: float32 numbers equal, bit for bit, those of
    the same weights without it (as for checkpoints saved before it existed)."""
    plain = without_pair(model)
    for name, make in SYSTEMS.items():
        atoms = make()
        props = ["energy", "forces", "energies"] + (["stress"] if atoms.pbc.all() else [])
        a = Predictor(model).predict([atoms], props)[0]
        b = Predictor(plain).predict([atoms], props)[0]
        for key in props:
            assert np.array_equal(a[key], b[key]), (name, key)


def scan(model: Equiformer, symbol: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rs = np.round(np.arange(0.2, 3.0001, 0.05), 3)
    predictor = Predictor(model, dtype="float64", min_distance_ratio=0.0)
    results = predictor.predict([dimer(symbol, r) for r in rs])
    energy = np.array([res["energy"] for res in results])
    forces = np.array([res["forces"] for res in results])
    return rs, energy, forces


def first_minimum(energy: np.ndarray) -> int:
    rising = np.flatnonzero(np.diff(energy) > 0)
    return int(rising[0]) if rising.size else len(energy) - 1


@pytest.mark.parametrize("symbol", ["Cu", "H"])
def test_dimer_scan_is_repulsive_below_equilibrium(model, symbol):
    rs, energy, forces = scan(model, symbol)
    k = first_minimum(energy)  # the first (local) equilibrium of the scan
    r_s = 0.75 * 2 * covalent_radii[atomic_numbers[symbol]]
    # the repulsive wall reaches the switch distance of the pair term: the random network does not
    # carve a minimum inside it
    assert rs[k] >= 0.9 * r_s, (rs[k], r_s)
    # monotone: energy decreases and the force on atom 1 (at +x) pushes it away, up to there
    assert np.all(np.diff(energy[: k + 1]) < 0)
    assert np.all(forces[:k, 1, 0] > 0) and np.all(forces[:k, 0, 0] < 0)
    np.testing.assert_allclose(forces[:, 0], -forces[:, 1], atol=1e-9)
    # and much higher than anything at or beyond equilibrium
    assert energy[0] > energy[k:].max() + 10.0


@pytest.mark.parametrize("symbol", ["Cu", "H"])
def test_without_the_term_the_same_network_is_not_repulsive(model, symbol):
    """The failure the term fixes: the bare network has no wall at short range."""
    rs, energy, forces = scan(without_pair(model), symbol)
    r_s = 0.75 * 2 * covalent_radii[atomic_numbers[symbol]]
    short = rs < r_s
    assert energy[0] < energy[short].max() + 10.0 or np.any(forces[short, 1, 0] <= 0)


def compressed_systems() -> dict[str, Atoms]:
    trimer = Atoms("CuOH", positions=[[0.0, 0.0, 0.0], [0.9, 0.1, 0.0], [1.2, 0.8, 0.3]])
    cu = bulk("Cu", "fcc", a=2.75, cubic=True)  # nearest neighbours at 1.94 A, inside Cu-Cu's 1.98 A
    cu.rattle(0.05, seed=2)
    return {"trimer": trimer, "bulk": cu}


@pytest.mark.parametrize("name", ["trimer", "bulk"])
def test_forces_with_the_pair_term_match_finite_differences(model, name):
    atoms = compressed_systems()[name]
    atoms.calc = EquiformerCalculator(model=model, dtype="float64", min_distance_ratio=0.0)
    plain = EquiformerCalculator(model=without_pair(model), dtype="float64", min_distance_ratio=0.0)
    assert abs(atoms.get_potential_energy() - plain.get_potential_energy(atoms)) > 1.0  # the term is on
    f = atoms.get_forces()
    fd = calculate_numerical_forces(atoms, eps=1e-5)
    np.testing.assert_allclose(f, fd, atol=1e-6 * max(1.0, np.abs(f).max()))
    if atoms.pbc.all():
        s = atoms.get_stress()
        fd_s = calculate_numerical_stress(atoms, eps=1e-6)
        np.testing.assert_allclose(s, fd_s, atol=1e-6 * max(1.0, np.abs(s).max()))


def test_reference_fit_uses_labels_minus_the_pair_term(model):
    """Labels made of per-element references plus the ZBL energy: fitting the residual recovers
    the references exactly; fitting the raw labels does not."""
    rng = np.random.default_rng(1)
    true = {"H": -1.1, "O": -4.3, "Cu": -3.2}
    frames = []
    for _ in range(10):
        symbols = ["Cu"] + [s for s in true for _ in range(int(rng.integers(1, 3)))]
        grid = np.array([(i, j, k) for i in range(3) for j in range(3) for k in range(3)], dtype=float)
        positions = 0.8 * grid[: len(symbols)] + rng.normal(0, 0.05, (len(symbols), 3))
        frames.append(Atoms(symbols, positions=positions))
    samples = samples_from_atoms([_label(a, 0.0) for a in frames], cutoff=model.cutoff)
    pair = [float(model.pair_energy(s.graph.numbers, s.graph.positions, s.graph.edge_index, s.graph.shifts,
                                    s.graph.cell, s.graph.batch, 1)[0]) for s in samples]
    assert min(pair) > 0.1  # close contacts: the term matters in every frame
    labelled = [_label(a, sum(true[x] for x in a.get_chemical_symbols()) + e) for a, e in zip(frames, pair)]
    samples = samples_from_atoms(labelled, cutoff=model.cutoff)
    elements = ["H", "O", "Cu"]
    refs, _, shift = fit_energy_references(samples, elements, model)
    np.testing.assert_allclose(refs, [true[s] for s in elements], atol=1e-9)
    assert abs(shift) < 1e-9
    raw, _, raw_shift = fit_energy_references(samples, elements)
    assert np.abs(raw - [true[s] for s in elements]).max() > 0.05 or abs(raw_shift) > 0.05


def _label(atoms: Atoms, energy: float) -> Atoms:
    atoms = atoms.copy()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=np.zeros((len(atoms), 3)))
    return atoms


# ------------------------------------------------------------------------------- distance floor
