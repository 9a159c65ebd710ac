"""``graph.cache.NeighborListCache``: exactly the fresh neighbour list, and why that is enough
(edges beyond the cutoff contribute exactly zero)."""

from __future__ import annotations

import numpy as np

from equiformer_calc.graph import NeighborListCache, build_graph, neighbor_list, structure_from_atoms
from equiformer_calc.predictor import compute

from ..helpers import bulk_cell, make_model
from ..workflows.shared import SEED, small_slab


def test_edges_beyond_cutoff_contribute_exactly_zero():
    """The envelope is identically 0 at r >= cutoff: a graph with extra edges out to cutoff + 1 A
    gives the same energy and forces (the skin list is filtered anyway, for speed)."""
    m = make_model(SEED).double()
    for atoms in (small_slab(), bulk_cell()):
        s = structure_from_atoms(atoms)
        g, g_skin = build_graph(s, m.cutoff), build_graph(s, m.cutoff + 1.0)
        assert g_skin.num_edges > g.num_edges
        a, b = compute(m, g), compute(m, g_skin)
        assert abs(float(a["energy"] - b["energy"])) < 1e-10
        assert float((a["forces"] - b["forces"]).abs().max()) < 1e-10


def test_neighbor_cache_returns_exactly_the_fresh_list():
    rng = np.random.default_rng(0)
    cache = NeighborListCache(skin=0.4)
    atoms = bulk_cell()
    for step in range(12):
        atoms.positions += rng.normal(scale=0.03, size=atoms.positions.shape)
        if step == 8:
            atoms.set_cell(atoms.cell.array * 1.01, scale_atoms=True)  # a cell change forces a search
        s = structure_from_atoms(atoms)
        for got, want in zip(cache.edges(s, 4.0), neighbor_list(s, 4.0)):
            np.testing.assert_array_equal(got, want)
    assert 2 <= cache.builds < 12 and cache.builds + cache.reuses == 12
