"""Tests of the radius-graph module against ASE's reference neighbour list.

Property-based (hypothesis) checks that ``equiformer_calc.graph.neighbor_list`` returns exactly
the (i, j, S) triples of ``ase.neighborlist.neighbor_list`` for triclinic cells, cells much
smaller than the cutoff, mixed and no periodicity, zero cells and atoms outside the cell; that
edge vectors rebuilt in torch equal ASE's; that batching offsets indices correctly; and that
bad inputs raise :class:`StructureError` with a message naming the problem.

Pairs whose distance is within ``EPS`` of the cutoff are ambiguous in floating point (the two
codes may round them to different sides), so the comparison is
``ase(cutoff - EPS) <= ours <= ase(cutoff + EPS)`` as sets.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.geometry import cellpar_to_cell
from ase.neighborlist import neighbor_list as ase_neighbor_list
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from equiformer_calc.graph import (
    MIN_DISTANCE,
    AtomicGraph,
    Structure,
    StructureError,
    batch_graphs,
    build_graph,
    local_frame,
    neighbor_list,
    structure_from_atoms,
)

EPS = 1e-6
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])

ALL_PBC = [tuple(bool(int(c)) for c in f"{k:03b}") for k in range(8)]
MIXED_PBC = [p for p in ALL_PBC if any(p) and not all(p)]


# ----------------------------------------------------------------------------------------------
# helpers


def triples(i, j, S) -> set[tuple[int, int, tuple[int, int, int]]]:
    S = np.asarray(S).reshape(-1, 3)
    return set(zip(np.asarray(i).tolist(), np.asarray(j).tolist(), map(tuple, S.astype(int).tolist())))


def ase_triples(atoms: Atoms, cutoff: float):
    return triples(*ase_neighbor_list("ijS", atoms, cutoff))


def ase_min_distance(atoms: Atoms, cutoff: float) -> float:
    d = ase_neighbor_list("d", atoms, cutoff)
    return float(d.min()) if d.size else np.inf


def _event(name: str) -> None:
    """hypothesis.event, tolerated outside a property-based test."""
    try:
        event(name)
    except InvalidArgument:
        pass


def assert_matches_ase(atoms: Atoms, cutoff: float) -> None:
    """Ours equals ASE's set of (i, j, S) up to pairs at |d - cutoff| < EPS; overlap raises."""
    structure = structure_from_atoms(atoms)
    dmin = ase_min_distance(atoms, cutoff)
    if abs(dmin - MIN_DISTANCE) < EPS:  # the overlap test itself is ambiguous there
        return
    if dmin < MIN_DISTANCE:
        _event("overlapping atoms")
        with pytest.raises(StructureError, match="overlap"):
            neighbor_list(structure, cutoff)
        return
    _event("compared with ASE")
    i, j, S = neighbor_list(structure, cutoff)
    # documented output: int64, sorted by i then j, no self-pair without a shift
    assert i.dtype == j.dtype == S.dtype == np.int64
    assert S.shape == (len(i), 3)
    assert np.all(np.diff(i) >= 0)
    same_i = np.diff(i) == 0
    assert np.all(np.diff(j)[same_i] >= 0)
    assert not np.any((i == j) & np.all(S == 0, axis=1))
    # shifts only along periodic axes
    assert np.all(S[:, ~atoms.pbc] == 0)
    ours = triples(i, j, S)
    assert len(ours) == len(i), "duplicate edges"
    inner = ase_triples(atoms, cutoff - EPS)
    outer = ase_triples(atoms, cutoff + EPS)
    missing = inner - ours
    extra = ours - outer
    assert not missing, f"{len(missing)} ASE edges missing, e.g. {sorted(missing)[:5]}"
    assert not extra, f"{len(extra)} edges not in ASE, e.g. {sorted(extra)[:5]}"


@st.composite
def triclinic_cells(draw, min_length=2.0, max_length=8.0):
    """Reasonably conditioned triclinic cells with random angles (rows are lattice vectors)."""
    lengths = [draw(st.floats(min_length, max_length)) for _ in range(3)]
    angles = [draw(st.floats(55.0, 125.0)) for _ in range(3)]
    alpha, beta, gamma = np.radians(angles)
    # volume factor; > 0 means the angles form a valid cell, bound it away from 0 for conditioning
    vf2 = 1 - np.cos(alpha) ** 2 - np.cos(beta) ** 2 - np.cos(gamma) ** 2
    vf2 += 2 * np.cos(alpha) * np.cos(beta) * np.cos(gamma)
    assume(vf2 > 0.25)
    cell = cellpar_to_cell(lengths + angles)
    # a random rotation so the cell is not aligned with the axes
    q = draw(st.lists(st.floats(-1, 1), min_size=4, max_size=4))
    q = np.asarray(q)
    assume(np.linalg.norm(q) > 0.1)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    rot = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    return cell @ rot.T


@st.composite
def fractional_positions(draw, n_min=1, n_max=10, lo=-1.5, hi=2.5):
    n = draw(st.integers(n_min, n_max))
    coords = draw(st.lists(st.floats(lo, hi), min_size=3 * n, max_size=3 * n))
    return np.asarray(coords).reshape(n, 3)


def make_atoms(frac, cell, pbc, numbers=None) -> Atoms:
    n = len(frac)
    if numbers is None:
        numbers = (np.arange(n) % 10) + 1
    return Atoms(numbers=numbers, positions=frac @ cell, cell=cell, pbc=pbc)


# ----------------------------------------------------------------------------------------------
# neighbour list vs ASE


@settings(max_examples=60, **SETTINGS)
@given(
    cell=triclinic_cells(),
    frac=fractional_positions(),
    cutoff=st.floats(1.0, 6.0),
)
def test_triclinic_periodic_matches_ase(cell, frac, cutoff):
    assert_matches_ase(make_atoms(frac, cell, True), cutoff)


@settings(max_examples=30, **SETTINGS)
@given(
    cell=triclinic_cells(min_length=0.6, max_length=1.5),
    frac=fractional_positions(n_min=1, n_max=3, lo=-1.0, hi=2.0),
    cutoff=st.floats(2.0, 3.5),
)
def test_tiny_cell_many_images_matches_ase(cell, frac, cutoff):
    """Cells several times smaller than the cutoff: many images of the same neighbour."""
    atoms = make_atoms(frac, cell, True)
    assert_matches_ase(atoms, cutoff)


@pytest.mark.parametrize("a", [0.7, 1.0, 2.5])
def test_one_atom_cell_sees_its_own_images(a):
    cutoff = 3.0
    atoms = Atoms("Cu", positions=[[0.1, 0.2, 0.3]], cell=np.eye(3) * a, pbc=True)
    i, j, S = neighbor_list(structure_from_atoms(atoms), cutoff)
    assert np.all(i == 0) and np.all(j == 0)
    # every image within the cutoff, and each appears with its mirror image
    expected = {
        (0, 0, (x, y, z))
        for x in range(-5, 6)
        for y in range(-5, 6)
        for z in range(-5, 6)
        if 0 < a * np.sqrt(x * x + y * y + z * z) < cutoff
    }
    assert triples(i, j, S) == expected
    assert triples(i, j, S) == ase_triples(atoms, cutoff)


@settings(max_examples=60, **SETTINGS)
@given(
    pbc=st.sampled_from(MIXED_PBC),
    cell=triclinic_cells(min_length=1.0, max_length=6.0),
    zero_nonperiodic=st.booleans(),
    frac=fractional_positions(n_max=8),
    cutoff=st.floats(1.0, 5.0),
)
def test_mixed_pbc_matches_ase(pbc, cell, zero_nonperiodic, frac, cutoff):
    """Mixed boundary conditions; non-periodic cell vectors may be zero or arbitrary."""
    positions = frac @ cell
    if zero_nonperiodic:
        cell = cell.copy()
        cell[~np.asarray(pbc)] = 0.0
    atoms = Atoms(numbers=(np.arange(len(frac)) % 10) + 1, positions=positions, cell=cell, pbc=pbc)
    assert_matches_ase(atoms, cutoff)


@pytest.mark.parametrize("pbc", MIXED_PBC)
def test_mixed_pbc_slab_and_wire(pbc):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=1)
    atoms.pbc = pbc
    atoms.positions[0] += [0, 0, -4.0]  # one atom outside the cell along every axis type
    assert_matches_ase(atoms, 4.0)


@settings(max_examples=50, **SETTINGS)
@given(
    n=st.integers(1, 20),
    data=st.data(),
    offset=st.floats(-50, 50),
    cutoff=st.floats(0.5, 6.0),
    use_cell=st.booleans(),
)
def test_nonperiodic_molecule_matches_ase(n, data, offset, cutoff, use_cell):
    coords = data.draw(st.lists(st.floats(-4.0, 4.0), min_size=3 * n, max_size=3 * n))
    positions = np.asarray(coords).reshape(n, 3) + offset
    # a zero cell (plain molecule) or a box that does not contain the atoms: both are ignored
    cell = np.diag([3.0, 4.0, 5.0]) if use_cell else np.zeros((3, 3))
    atoms = Atoms(numbers=(np.arange(n) % 10) + 1, positions=positions, cell=cell, pbc=False)
    assert_matches_ase(atoms, cutoff)


@pytest.mark.parametrize("name", ["C6H6", "CH3CH2OH", "H2O"])
def test_real_molecules_match_ase(name):
    atoms = molecule(name)
    assert not atoms.cell.any()
    for cutoff in (1.2, 2.5, 6.0):
        assert_matches_ase(atoms, cutoff)


def test_atoms_outside_cell_match_ase():
    cell = cellpar_to_cell([4.0, 4.5, 5.0, 80.0, 95.0, 110.0])
    frac = np.array([[-0.7, 0.2, 0.1], [1.8, -1.3, 0.5], [0.5, 0.5, 3.2], [0.1, 0.1, 0.1]])
    for pbc in ALL_PBC:
        assert_matches_ase(make_atoms(frac, cell, pbc), 5.0)


def test_single_atom_without_neighbours():
    i, j, S = neighbor_list(Structure.from_arrays([1], [[0.0, 0.0, 0.0]]), 5.0)
    assert i.shape == j.shape == (0,) and S.shape == (0, 3)
    graph = build_graph(Structure.from_arrays([1], [[0.0, 0.0, 0.0]]), 5.0)
    assert graph.edge_index.shape == (2, 0) and graph.shifts.shape == (0, 3)


def test_cutoff_must_be_positive():
    with pytest.raises(ValueError, match="cutoff"):
        neighbor_list(structure_from_atoms(molecule("H2O")), 0.0)


# ----------------------------------------------------------------------------------------------
# edge vectors in torch


def edge_vectors(graph: AtomicGraph) -> torch.Tensor:
    src, dst = graph.edge_index
    cell = graph.cell[graph.batch[dst]]
    return graph.positions[src] - graph.positions[dst] + torch.einsum("ek,ekx->ex", graph.shifts, cell)


@settings(max_examples=40, **SETTINGS)
@given(
    pbc=st.sampled_from(ALL_PBC),
    cell=triclinic_cells(min_length=1.5, max_length=6.0),
    frac=fractional_positions(n_max=8),
    cutoff=st.floats(1.0, 5.0),
)
def test_edge_vectors_equal_ase_D(pbc, cell, frac, cutoff):
    atoms = make_atoms(frac, cell, pbc)
    assume(ase_min_distance(atoms, cutoff) > MIN_DISTANCE + EPS)
    structure = structure_from_atoms(atoms)
    graph = build_graph(structure, cutoff)
    assert graph.edge_index.dtype == torch.int64 and graph.shifts.dtype == torch.float64
    vec = edge_vectors(graph).numpy()
    ai, aj, aS, aD = ase_neighbor_list("ijSD", atoms, cutoff + EPS)
    ref = {(a, b, tuple(s)): d for a, b, s, d in zip(ai.tolist(), aj.tolist(), aS.tolist(), aD)}
    dst = graph.edge_index[1].tolist()
    src = graph.edge_index[0].tolist()
    # the graph's shifts refer to its local (wrapped) positions: back to the input's convention
    images = local_frame(structure).images
    shifts = (graph.shifts.round().long().numpy() - images[src] + images[dst]).tolist()
    for k, key in enumerate(zip(dst, src, map(tuple, shifts))):
        assert key in ref
        np.testing.assert_allclose(vec[k], ref[key], atol=1e-9, rtol=0)
    assert np.all(np.linalg.norm(vec, axis=1) < cutoff + EPS)


def test_edge_vectors_are_differentiable():
    atoms = bulk("Cu", "fcc", a=3.6).repeat(2)
    atoms.rattle(0.05, seed=0)
    graph = build_graph(structure_from_atoms(atoms), 4.0)
    graph.positions.requires_grad_(True)
    graph.cell.requires_grad_(True)
    energy = edge_vectors(graph).norm(dim=1).sum()
    energy.backward()
    assert graph.positions.grad is not None and torch.isfinite(graph.positions.grad).all()
    # translation invariance: the forces sum to zero
    assert torch.allclose(graph.positions.grad.sum(0), torch.zeros(3, dtype=torch.float64), atol=1e-9)
    assert graph.cell.grad is not None and torch.isfinite(graph.cell.grad).all()


def test_graph_dtype_and_to():
    graph = build_graph(structure_from_atoms(molecule("H2O")), 3.0, dtype=torch.float32)
    assert graph.positions.dtype == graph.cell.dtype == graph.shifts.dtype == torch.float32
    g64 = graph.to(dtype=torch.float64)
    assert g64.positions.dtype == torch.float64
    assert g64.edge_index.dtype == g64.numbers.dtype == g64.batch.dtype == torch.int64
    assert g64.pbc.dtype == torch.bool


# ----------------------------------------------------------------------------------------------
# batching


def _example_structures() -> list[Atoms]:
    cu = bulk("Cu", "fcc", a=3.6).repeat((2, 1, 1))
    cu.rattle(0.02, seed=3)
    slab = bulk("Al", "fcc", a=4.05, cubic=True)
    slab.pbc = [True, True, False]
    return [molecule("H2O"), cu, molecule("CH4"), slab, Atoms("Ar"), molecule("C6H6")]


EXAMPLES = _example_structures()
CUTOFF = 3.5


@pytest.fixture(scope="module")
def single_graphs() -> list[AtomicGraph]:
    return [build_graph(structure_from_atoms(a), CUTOFF) for a in EXAMPLES]


def check_batch(batched: AtomicGraph, parts: list[AtomicGraph]) -> None:
    counts = [g.num_atoms for g in parts]
    n_graphs = sum(g.num_graphs for g in parts)
    assert batched.num_graphs == n_graphs
    assert batched.num_atoms == sum(counts)
    assert batched.num_edges == sum(g.num_edges for g in parts)
    offsets = np.cumsum([0] + counts)
    graph_offsets = np.cumsum([0] + [g.num_graphs for g in parts])
    expected_edges = torch.cat([g.edge_index + int(o) for g, o in zip(parts, offsets)], dim=1)
    assert torch.equal(batched.edge_index, expected_edges)
    assert torch.equal(batched.batch, torch.cat([g.batch + int(b) for g, b in zip(parts, graph_offsets)]))
    # ptr / batch consistency
    assert batched.ptr[0] == 0 and batched.ptr[-1] == batched.num_atoms
    assert batched.ptr.shape == (n_graphs + 1,)
    sizes = torch.diff(batched.ptr)
    assert torch.equal(batched.batch, torch.repeat_interleave(torch.arange(n_graphs), sizes))
    assert torch.all(torch.diff(batched.batch) >= 0)
    # edges never cross graphs, and edge vectors are unchanged by batching
    src, dst = batched.edge_index
    assert torch.equal(batched.batch[src], batched.batch[dst])
    assert torch.allclose(edge_vectors(batched), torch.cat([edge_vectors(g) for g in parts]))
    assert batched.cell.shape == (n_graphs, 3, 3) and batched.pbc.shape == (n_graphs, 3)


def test_batch_graphs_offsets(single_graphs):
    batched = batch_graphs(single_graphs)
    check_batch(batched, single_graphs)
    assert torch.equal(batched.ptr, torch.tensor(np.cumsum([0] + [len(a) for a in EXAMPLES])))
    assert batch_graphs(single_graphs[:1]) is single_graphs[0]
    with pytest.raises(ValueError):
        batch_graphs([])


@settings(max_examples=40, **SETTINGS)
@given(data=st.data())
def test_batching_batched_graphs(single_graphs, data):
    """Batching already-batched graphs gives the same result as batching flat."""
    order = data.draw(st.lists(st.integers(0, len(single_graphs) - 1), min_size=2, max_size=8))
    graphs = [single_graphs[k] for k in order]
    # split the list into consecutive groups, batch each group, then batch the groups
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(graphs) - 1), max_size=4))))
    bounds = [0] + cuts + [len(graphs)]
    groups = [batch_graphs(graphs[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    nested = batch_graphs(groups)
    flat = batch_graphs(graphs)
    check_batch(nested, groups)
    check_batch(flat, graphs)
    for name in AtomicGraph.__dataclass_fields__:
        a, b = getattr(nested, name), getattr(flat, name)
        assert (a is None and b is None) or torch.equal(a, b), name


def test_batch_of_batches_batch_vector(single_graphs):
    """Regression: a first part holding several graphs must shift the later graph indices."""
    a = batch_graphs(single_graphs[:3])
    b = batch_graphs([a, single_graphs[3]])
    assert b.batch.max().item() == 3
    assert torch.equal(b.batch[-len(EXAMPLES[3]):], torch.full((len(EXAMPLES[3]),), 3))


# ----------------------------------------------------------------------------------------------
# invalid structures


H2 = dict(numbers=[1, 1], positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.74]])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(numbers=[], positions=[]), "no atoms"),
        (dict(numbers=[], positions=np.zeros((0, 3))), "no atoms"),
        (dict(numbers=[1, 1], positions=[[0.0, 0.0, np.nan], [0.0, 0.0, 0.74]]), "NaN or inf"),
        (dict(numbers=[1, 1], positions=[[0.0, 0.0, 0.0], [np.inf, 0.0, 0.74]]), "NaN or inf"),
        (dict(numbers=[1, 1], positions=[[0.0, 0.0], [0.0, 0.74]]), r"positions must have shape \(N, 3\)"),
        (dict(numbers=[1, 1], positions=[0.0, 0.0, 0.74]), r"positions must have shape \(N, 3\)"),
        (dict(numbers=[1, 1, 1], positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.74]]), "3 atomic numbers but 2"),
        (dict(numbers=[[1, 1]], positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.74]]), "numbers must be a 1-D"),
        (dict(numbers=[1.5, 1], positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.74]]), "integers"),
        (dict(**H2, cell=np.eye(2)), r"cell must have shape \(3, 3\)"),
        (dict(**H2, cell=np.eye(3), pbc=[True, True]), "pbc must be one bool or three"),
        (dict(**H2, cell=[[np.nan, 0, 0], [0, 1, 0], [0, 0, 1]]), "cell contains NaN or inf"),
        (dict(numbers=[0, 1], positions=H2["positions"]), r"invalid atomic numbers \[0\]"),
        (dict(numbers=[1, 200], positions=H2["positions"]), r"invalid atomic numbers \[200\]"),
        (dict(numbers=[-1, 119], positions=H2["positions"]), r"invalid atomic numbers \[-1, 119\]"),
        (dict(**H2, pbc=True), "pbc is True along axis 0 but cell vector 0 is zero"),
        (dict(**H2, cell=np.zeros((3, 3)), pbc=True), "cell vector 0 is zero"),
        (dict(**H2, cell=np.diag([5.0, 5.0, 0.0]), pbc=True), "pbc is True along axis 2"),
        (dict(**H2, cell=np.diag([5.0, 0.0, 0.0]), pbc=[False, True, False]), "axis 1"),
        # coplanar (degenerate) cells
        (dict(**H2, cell=[[3, 0, 0], [0, 3, 0], [3, 3, 0]], pbc=True), "degenerate"),
        (dict(**H2, cell=[[3, 0, 0], [6, 0, 0], [0, 0, 3]], pbc=[True, True, False]), "degenerate"),
        (dict(**H2, cell=[[3, 0, 0], [1, 2, 0], [2, -2, 1e-9]], pbc=True), "degenerate"),
    ],
)
def test_invalid_structures_raise(kwargs, match):
    with pytest.raises(StructureError, match=match):
        Structure.from_arrays(**kwargs)


def test_structure_error_is_value_error():
    assert issubclass(StructureError, ValueError)


def test_unreadable_arrays_raise_structure_error():
    with pytest.raises(StructureError, match="could not read"):
        Structure.from_arrays([1, 1], [[0.0, 0.0, "x"], [0.0, 0.0, 1.0]])
    with pytest.raises(StructureError):
        Structure.from_arrays([1, 1], [[0.0, 0.0, 0.0], [0.0, 0.0]])  # ragged


def test_valid_structures_accepted():
    s = Structure.from_arrays([1, 8, 1], molecule("H2O").positions)
    assert len(s) == 3 and not s.pbc.any() and np.array_equal(s.cell, np.zeros((3, 3)))
    s = Structure.from_arrays([29], [[0, 0, 0]], cell=[3.6, 3.6, 3.6], pbc=True)
    assert np.allclose(s.cell, np.eye(3) * 3.6) and s.pbc.all()
    # non-periodic axes may have a zero vector
    Structure.from_arrays(**H2, cell=np.diag([5.0, 5.0, 0.0]), pbc=[True, True, False])
    # float atomic numbers that are integral are fine
    assert Structure.from_arrays([1.0, 1.0], H2["positions"]).numbers.dtype == np.int64


@pytest.mark.parametrize("pbc", [False, True, (True, True, False)])
def test_overlapping_atoms_raise(pbc):
    cell = np.eye(3) * 6.0
    positions = [[1.0, 1.0, 1.0], [2.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    structure = Structure.from_arrays([1, 6, 8], positions, cell=cell, pbc=pbc)
    with pytest.raises(StructureError, match=r"atoms (0 \(H\) and 2 \(O\)|2 \(O\) and 0 \(H\)) overlap.*floor of 0.1 A"):
        neighbor_list(structure, 3.0)
    with pytest.raises(StructureError, match="overlap"):
        build_graph(structure, 3.0)


def test_overlap_with_periodic_image_raises():
    # atom 1 sits on the image of atom 0 one cell over
    structure = Structure.from_arrays(
        [1, 1], [[0.5, 0.5, 0.5], [4.5 + 1e-3, 0.5, 0.5]], cell=np.eye(3) * 4.0, pbc=True
    )
    with pytest.raises(StructureError, match="overlap"):
        neighbor_list(structure, 3.0)


def test_close_but_not_overlapping_atoms_are_fine():
    structure = Structure.from_arrays([1, 1], [[0.0, 0.0, 0.0], [0.0, 0.0, 2 * MIN_DISTANCE]])
    i, j, S = neighbor_list(structure, 1.0)
    assert triples(i, j, S) == {(0, 1, (0, 0, 0)), (1, 0, (0, 0, 0))}


# ----------------------------------------------------------------------------------------------
# wrapping


def distances_per_atom(atoms: Atoms, cutoff: float) -> list[list[float]]:
    graph = build_graph(structure_from_atoms(atoms), cutoff)
    d = edge_vectors(graph).norm(dim=1).numpy()
    dst = graph.edge_index[1].numpy()
    return [np.sort(d[dst == a]) for a in range(len(atoms))]


@settings(max_examples=40, **SETTINGS)
@given(
    pbc=st.sampled_from([p for p in ALL_PBC if any(p)]),
    cell=triclinic_cells(min_length=1.5, max_length=6.0),
    frac=fractional_positions(n_max=8, lo=-2.5, hi=3.5),
    cutoff=st.floats(1.0, 5.0),
)
def test_wrapping_preserves_edge_distances(pbc, cell, frac, cutoff):
    atoms = make_atoms(frac, cell, pbc)
    # skip structures with a pair within EPS of the cutoff (it may flip on wrapping) or overlaps
    d = ase_neighbor_list("d", atoms, cutoff + EPS)
    assume(not np.any(np.abs(d - cutoff) < EPS))
    assume(d.size == 0 or d.min() > MIN_DISTANCE + EPS)
    before = distances_per_atom(atoms, cutoff)
    wrapped = atoms.copy()
    wrapped.wrap()
    if all(pbc):
        assert np.all((wrapped.get_scaled_positions(wrap=False) > -1e-6))  # ASE wraps with eps 1e-7
    after = distances_per_atom(wrapped, cutoff)
    # same multiset of distances overall, and around every atom
    np.testing.assert_allclose(np.sort(np.concatenate(before)), np.sort(np.concatenate(after)), atol=1e-8)
    for b, a in zip(before, after):
        np.testing.assert_allclose(b, a, atol=1e-8)
