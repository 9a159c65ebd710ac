"""Physics of the network: symmetry, smoothness, periodic images, batching, presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from scipy.spatial.transform import Rotation

from equiformer_calc.graph import batch_graphs, build_graph, structure_from_atoms
from equiformer_calc.model import Equiformer, EquiformerConfig, UnknownElementError
from equiformer_calc.predictor import compute

from .equivariance import assert_equivariant
from .helpers import ELEMENTS, SYSTEMS, make_model


def evaluate(model: Equiformer, atoms: Atoms, dtype=torch.float32) -> tuple[float, np.ndarray]:
    model = model.to(dtype)
    graph = build_graph(structure_from_atoms(atoms), model.cutoff, dtype=dtype)
    out = compute(model, graph, forces=True)
    return float(out["energy"][0].detach()), out["forces"].detach().double().numpy()


def assert_close(e1, f1, e2, f2, rtol=1e-5):
    assert abs(e1 - e2) <= rtol * max(abs(e1), 1.0), (e1, e2)
    scale = max(np.abs(f1).max(), 1e-3)
    np.testing.assert_allclose(f1, f2, atol=rtol * 10 * scale, rtol=0)


def model_results(model: Equiformer, atoms: Atoms, dtype=torch.float32) -> dict[str, object]:
    """Energy, forces and (3D-periodic) stress of the bare model through :func:`compute`."""
    model = model.to(dtype)
    graph = build_graph(structure_from_atoms(atoms), model.cutoff, dtype=dtype)
    periodic = bool(atoms.pbc.all())
    out = compute(model, graph, forces=True, stress=periodic)
    res = {"energy": float(out["energy"][0].detach()), "forces": out["forces"].detach().double().numpy()}
    if periodic:
        res["stress"] = out["stress"][0].detach().double().numpy()
    return res


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rotation_invariance_and_force_equivariance(tiny_model, system, seed):
    """Rotations, reflections (E(3) model), translations and permutations of the atoms: energy
    invariant, forces and stress equivariant (the shared check of tests/equivariance.py)."""
    assert_equivariant(lambda atoms: model_results(tiny_model, atoms), system, seed=seed)


def mirror(atoms: Atoms) -> Atoms:
    m = atoms.copy()
    reflect = np.diag([-1.0, 1.0, 1.0])
    m.positions = atoms.positions @ reflect
    m.cell = atoms.cell.array @ reflect
    return m


def test_se3_model_distinguishes_mirror_images(tiny_model_se3):
    """The SE(3) variant (reference irreps) is rotation- but not reflection-invariant: on a chiral
    structure the two enantiomers get different energies, which is why E(3) is our default."""
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.2, seed=11)  # break every mirror plane
    e0, _ = evaluate(tiny_model_se3, atoms, torch.float64)
    e1, _ = evaluate(tiny_model_se3, mirror(atoms), torch.float64)
    rot = Rotation.random(random_state=3).as_matrix()
    r = atoms.copy()
    r.positions = atoms.positions @ rot.T
    e2, _ = evaluate(tiny_model_se3, r, torch.float64)
    assert abs(e0 - e2) < 1e-9
    assert abs(e0 - e1) > 1e-6


@pytest.mark.parametrize("kind", ["slab", "bulk"])
def test_rewrapping_changes_nothing(tiny_model, kind):
    """Atoms moved out of the cell and wrapped back give the same numbers (translations are part
    of the shared symmetry check)."""
    system = SYSTEMS[kind]()
    e0, f0 = evaluate(tiny_model, system)
    moved = system.copy()
    moved.positions += np.array([1.3, -2.1, 0.7])
    moved.wrap()
    e1, f1 = evaluate(tiny_model, moved)
    assert_close(e0, f0, e1, f1)


def test_primitive_cell_equals_supercell_per_atom(tiny_model):
    prim = bulk("Cu", "fcc", a=3.6)  # one atom, cell much smaller than the cutoff
    sup = prim * (3, 3, 3)
    e1, f1 = evaluate(tiny_model, prim, torch.float64)
    e27, f27 = evaluate(tiny_model, sup, torch.float64)
    assert abs(e1 - e27 / 27) < 1e-9
    assert np.abs(f27).max() < 1e-9


def test_triclinic_cell_choice_does_not_matter(tiny_model):
    """The same crystal described by two different (skewed) cells gives the same energy."""
    atoms = bulk("Cu", "fcc", a=3.6)
    cell = atoms.cell.array
    other = atoms.copy()
    other.set_cell(np.array([cell[0], cell[1] + cell[0], cell[2] - 2 * cell[1]]), scale_atoms=False)
    e1, _ = evaluate(tiny_model, atoms, torch.float64)
    e2, _ = evaluate(tiny_model, other, torch.float64)
    assert abs(e1 - e2) < 1e-9


@pytest.mark.parametrize("norm", ["smooth", "block"])
def test_energy_continuous_across_cutoff(norm):
    model = make_model(2, norm=norm).double()
    cutoff = model.cutoff

    def energy_and_force(r: float) -> tuple[float, float]:
        atoms = Atoms("CuO", positions=[[0, 0, 0], [r, 0, 0]])
        e, f = evaluate(model, atoms, torch.float64)
        return e, f[1, 0]

    e_out, f_out = energy_and_force(cutoff + 1e-6)
    e_in, f_in = energy_and_force(cutoff - 1e-6)
    e_far, f_far = energy_and_force(cutoff + 0.5)
    assert abs(e_in - e_out) < 1e-9 and abs(e_out - e_far) < 1e-12
    assert abs(f_in) < 1e-7 and f_out == 0.0
    # and the dimer energy really depends on distance inside the cutoff
    assert abs(energy_and_force(2.0)[0] - e_far) > 1e-3


def test_batch_equals_single(tiny_model):
    systems = [f() for f in SYSTEMS.values()] + [bulk("Al", "fcc", a=4.05)]
    model = tiny_model.double()
    singles = [evaluate(model, a, torch.float64) for a in systems]
    graphs = [build_graph(structure_from_atoms(a), model.cutoff) for a in systems]
    batch = batch_graphs(graphs)
    out = compute(model, batch, forces=True)
    ptr = batch.ptr.tolist()
    for k, (e, f) in enumerate(singles):
        assert abs(float(out["energy"][k]) - e) < 1e-10
        np.testing.assert_allclose(out["forces"][ptr[k] : ptr[k + 1]].detach().numpy(), f, atol=1e-10)
    assert torch.allclose(out["energies"].sum(), out["energy"].sum())


def test_unknown_element_is_named():
    model = make_model(0)
    atoms = molecule("SiH4")
    with pytest.raises(UnknownElementError, match="Si.*supports H, C, N, O"):
        evaluate(model, atoms)


@pytest.mark.parametrize(
    "preset, expected",
    [("md17-l2", 3_488_129), ("md17-l3", 5_492_993), ("oc20-is2re", 9_103_105)],
)
def test_presets_match_reference_parameter_counts(preset, expected):
    """With SE(3) irreps (as the reference uses) the published settings have the reference's size:
    ~3.5M (MD17 L=2), ~5.5M (MD17 L=3), ~9.1M (OC20 IS2RE; 11 elements here)."""
    elements = ELEMENTS if preset == "oc20-is2re" else ["H", "C", "N", "O"]
    model = Equiformer.from_preset(preset, elements=elements, parity=False)
    assert model.num_parameters() == expected


def test_config_roundtrip_and_ablations():
    cfg = EquiformerConfig(elements=["H", "O"], num_blocks=1, irreps_node="8x0e+4x1e", lmax=1,
                           irreps_head="4x0e+2x1e", irreps_mlp="8x0e+4x1e", irreps_feature="8x0e",
                           attention="dot", nonlinear_message=False, radial_basis="gaussian", num_basis=16)
    model = Equiformer.from_config(cfg.to_dict())
    assert model.config == cfg
    atoms = molecule("H2O")
    e, f = evaluate(model, atoms, torch.float64)
    rot = Rotation.random(random_state=0).as_matrix()
    r = atoms.copy()
    r.positions = atoms.positions @ rot.T
    e2, f2 = evaluate(model, r, torch.float64)
    assert abs(e - e2) < 1e-9 and np.allclose(f @ rot.T, f2, atol=1e-9)
    with pytest.raises(ValueError, match="unknown Equiformer config keys"):
        EquiformerConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_energy_accumulated_in_float64(tiny_model):
    model = tiny_model.float()
    assert model.atomic_energies.dtype == torch.float64
    with torch.no_grad():
        model.atomic_energies.fill_(-1234.56789012)
    try:
        atoms = molecule("CH4")
        e, _ = evaluate(model, atoms)
        graph = build_graph(structure_from_atoms(atoms), model.cutoff, dtype=torch.float32)
        out = compute(model, graph, forces=False)
        assert out["energy"].dtype == torch.float64
        # float32 accumulation would lose the 1e-5 eV digits of a 6 kEV total
        per_atom = out["energies"] - model.atomic_energies[0]
        assert abs(float(out["energy"][0]) - (float(per_atom.sum()) - 5 * 1234.56789012)) < 1e-9
    finally:
        with torch.no_grad():
            model.atomic_energies.copy_(torch.linspace(-5.0, -1.0, len(model.elements), dtype=torch.float64))


def test_torch_voigt_agrees_with_ase() -> None:
    import torch
    from ase.stress import full_3x3_to_voigt_6_stress

    from equiformer_calc.predictor import voigt

    rng = np.random.default_rng(0)
    m = rng.normal(size=(3, 3, 3))
    m = m + m.transpose(0, 2, 1)
    np.testing.assert_array_equal(voigt(torch.from_numpy(m)).numpy(), [full_3x3_to_voigt_6_stress(x) for x in m])
