"""Edge and memory budgets: estimate before the search, refuse clearly, cut batches to fit.

Issue 11, failure 2: one Cu atom in a 0.15 A cell made 155,330 edges and 6.2 GB; a 0.01 A cell
passed 12.6 GB before any error; a 20,000-atom bulk grew past 12.6 GB. Now the edge count is
estimated before any neighbour search (``graph.estimate_edges``) and charged
``predictor.call_bytes`` (the one memory model, per memory mode); structures over ``max_edges``
raise ``BudgetError`` and structures whose call cannot fit the memory limit even in the leanest
mode allowed raise ``MemoryBudgetError`` (a ``BudgetError``; both a ``StructureError`` and a
``MemoryError``), naming the estimate and the limit, and no allocation happens (the neighbour search
is never called).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.cluster import Icosahedron

from equiformer_calc import predictor as predictor_module
from equiformer_calc.graph import (
    BudgetError,
    StructureError,
    estimate_edges,
    neighbor_list,
    structure_from_atoms,
)
from equiformer_calc.predictor import (
    MEMORY_HEADROOM,
    MemoryBudgetError,
    Predictor,
    available_memory,
    bytes_per_edge,
    total_memory,
)

from .helpers import SYSTEMS, make_model


def _cases() -> dict[str, Atoms]:
    cases = {name: make() for name, make in SYSTEMS.items()}
    cases["tiny cell 0.7 A"] = Atoms("Cu", cell=np.eye(3) * 0.7, pbc=True)
    cases["bulk 864"] = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(6)
    cases["cluster 147"] = Icosahedron("Cu", 4)
    far = Icosahedron("Cu", 4)
    far += Atoms("Cu", positions=[[500.0, 0.0, 0.0]])
    cases["cluster + far atom"] = far
    slab = fcc111("Pt", (4, 4, 4), vacuum=10.0)
    cases["slab TTF"] = slab
    periodic_slab = slab.copy()
    periodic_slab.pbc = True
    cases["slab in a 3D cell"] = periodic_slab
    cases["benzene"] = molecule("C6H6")
    wire = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((6, 2, 2))
    wire.pbc = [True, False, False]
    cases["wire"] = wire
    return cases


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("cutoff", [3.0, 5.0])
def test_edge_estimate_is_within_a_small_factor_of_the_count(name, cutoff):
    structure = structure_from_atoms(CASES[name])
    actual = len(neighbor_list(structure, cutoff)[0])
    estimate = estimate_edges(structure, cutoff)
    assert 0.5 * actual <= estimate <= 4.0 * actual + 50, (estimate, actual)


def test_tiny_periodic_cells_are_estimated_exactly_enough():
    # the numbers: 1 Cu atom in a 0.15 A cube with a 5 A cutoff has 155,330 edges
    structure = structure_from_atoms(Atoms("Cu", cell=np.eye(3) * 0.15, pbc=True))
    assert estimate_edges(structure, 5.0) == pytest.approx(155_330, rel=0.01)
    # 0.01 A: ~5e8 edges, estimated without forming one
    tiny = structure_from_atoms(Atoms("Cu", cell=np.eye(3) * 0.01, pbc=True))
    assert estimate_edges(tiny, 5.0) == pytest.approx(4 / 3 * np.pi * 125 / 1e-6, rel=0.01)


@pytest.fixture
def no_search(monkeypatch):
    """Make any neighbour search a test failure: refusals must come before it."""
    import vesin

    class Forbidden:
        def __init__(self, *args, **kwargs):
            raise AssertionError("the neighbour search ran for a structure that should have been refused")

    monkeypatch.setattr(vesin, "NeighborList", Forbidden)


@pytest.fixture(scope="module")
def model():
    return make_model(0)


# a 0.15 A cell (155,330 edges) fits 1 GiB in low-memory mode, so only memory="fast" refuses it
@pytest.mark.parametrize("a, memory", [(0.15, "fast"), (0.01, "fast"), (0.01, "auto")])
def test_tiny_cells_are_refused_before_the_search(model, no_search, a, memory):
    predictor = Predictor(model, memory_budget=1 << 30, min_distance_ratio=0.0, memory=memory)
    atoms = Atoms("Cu", cell=np.eye(3) * a, pbc=True)
    mode = "fast" if memory == "fast" else "low"
    with pytest.raises(MemoryBudgetError, match=rf"structure 0: 1 atoms .* about [\d,]+ edges; .* in memory='{mode}' "
                                                rf"mode .* over the memory budget of 1 GiB") as info:
        predictor.predict([atoms])
    err = info.value
    assert isinstance(err, BudgetError) and isinstance(err, MemoryError) and isinstance(err, StructureError)
    assert err.unit == "bytes" and err.limit == 1 << 30 and err.estimate > err.limit
    # the graph-level guard refuses the search itself too, with the edge count
    with pytest.raises(BudgetError, match="edges per structure"):
        neighbor_list(structure_from_atoms(atoms), 5.0, max_edges=100_000)


def test_large_bulk_is_refused_by_the_memory_budget(model, no_search):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((25, 20, 10))  # 20,000 atoms
    predictor = Predictor(model, memory_budget=4 << 30, memory="fast")
    with pytest.raises(MemoryBudgetError, match="20000 atoms .* about [\\d,]+ edges; evaluating energy, forces in "
                                                "memory='fast' mode would need about [\\d.]+ GiB, over the memory "
                                                "budget of 4 GiB"):
        predictor.predict([atoms])
    # energy alone keeps no per-edge tensors for a backward pass: a smaller estimate per edge
    assert predictor.bytes_per_edge(["energy"]) < 0.5 * predictor.bytes_per_edge(["energy", "forces"])
    # memory="auto" (the default) would run it in low-memory mode instead: the estimate fits
    auto = Predictor(model, memory_budget=4 << 30)
    edges = auto.check_budget(structure_from_atoms(atoms))
    assert auto.memory_mode(edges) == "low"


def test_max_edges_per_structure(model, no_search):
    predictor = Predictor(model, max_edges=1000, memory_budget=None)
    with pytest.raises(BudgetError, match="structure 1: .* over the limit of 1,000 edges per structure") as info:
        predictor.predict([molecule("H2O"), bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)])
    assert info.value.unit == "edges"


def test_actual_count_is_checked_after_the_search(model):
    """The estimate can be low (here a slab in a 3D cell, ~0.67 of the count); the exact count
    is checked again before the model call."""
    atoms = CASES["slab in a 3D cell"]
    structure = structure_from_atoms(atoms)
    estimate = estimate_edges(structure, model.cutoff)
    actual = len(neighbor_list(structure, model.cutoff)[0])
    assert estimate < actual
    predictor = Predictor(model, max_edges=(estimate + actual) // 2, memory_budget=None)
    with pytest.raises(BudgetError, match=f"make exactly {actual:,} edges"):
        predictor.predict([atoms])


def test_batches_are_cut_to_fit_the_edge_limit(model, monkeypatch):
    structures = [SYSTEMS[name]() for name in sorted(SYSTEMS)] * 3
    reference = Predictor(model, dtype="float64").predict(structures)
    edges = [len(neighbor_list(structure_from_atoms(a), model.cutoff)[0]) for a in structures]
    limit = 2 * max(edges)
    seen: list[int] = []
    original = predictor_module.compute

    def spy(model, graph, **kwargs):
        seen.append(graph.num_edges)
        return original(model, graph, **kwargs)

    monkeypatch.setattr(predictor_module, "compute", spy)
    predictor = Predictor(model, dtype="float64", max_edges=limit, memory_budget=None)
    # the chunking uses estimates; give it room for their error and check the real calls
    results = predictor.predict(structures)
    assert len(seen) > 1 and sum(seen) == sum(edges)
    assert max(seen) <= 2 * limit
    for got, want in zip(results, reference):
        assert abs(got["energy"] - want["energy"]) < 1e-9
        np.testing.assert_allclose(got["forces"], want["forces"], atol=1e-9)


def test_budget_settings_and_errors():
    model = make_model(0)
    # "auto": a share of the memory available when a call starts; its ceiling, a share of all memory
    auto = Predictor(model)
    assert auto.memory_budget == "auto"
    assert auto.memory_limit() == pytest.approx(MEMORY_HEADROOM * available_memory(), rel=0.2)
    physical = __import__("os").sysconf("SC_PAGE_SIZE") * __import__("os").sysconf("SC_PHYS_PAGES")
    assert 0 < total_memory() <= physical
    assert auto.memory_capacity() == int(MEMORY_HEADROOM * total_memory())
    assert auto.memory_limit() <= auto.memory_capacity()
    fixed = Predictor(model, memory_budget=123_456_789)
    assert fixed.memory_limit() == fixed.memory_capacity() == 123_456_789
    assert Predictor(model, memory_budget=None).memory_limit() is None
    with pytest.raises(ValueError, match="memory_budget"):
        Predictor(model, memory_budget=-1)
    with pytest.raises(ValueError, match="max_edges"):
        Predictor(model, max_edges=0)
    # float64 needs twice the bytes of float32
    assert bytes_per_edge(model.config, "float64") == 2 * bytes_per_edge(model.config, "float32")
    err = pickle.loads(pickle.dumps(BudgetError("too big", 10, 5, "edges")))
    assert (str(err), err.estimate, err.limit, err.unit) == ("too big", 10, 5, "edges")
    err = pickle.loads(pickle.dumps(MemoryBudgetError("too much", 10.0, 5)))
    assert type(err) is MemoryBudgetError and (str(err), err.estimate, err.limit, err.unit) == ("too much", 10.0, 5, "bytes")
