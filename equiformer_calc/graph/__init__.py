"""Radius graphs of atomic structures, and batching of many graphs into one.

This package turns positions / cell / pbc into an edge list and knows nothing of the network. Its
modules follow the data: :mod:`.structure` (checks of the plain arrays) -> :mod:`.frame` (one local
frame per structure, computed once and passed on) -> :mod:`.neighbors` (edge estimate and budget,
distance floor, vesin's compiled cell list) -> :mod:`.batch` (``AtomicGraph``, edge vectors,
batching); :mod:`.cache` is the Verlet-skin neighbour list of a slowly changing structure.
PyTorch Geometric conversion lives in ``equiformer_calc.integrations.pyg``.

Edges follow the convention of ``ase.neighborlist.neighbor_list``: for an edge ``(i, j, S)``
the edge vector is ``pos[j] - pos[i] + S @ cell``; the message flows from the neighbour ``j``
(source) to the centre ``i`` (destination). The search handles non-periodic, fully periodic and
mixed boundary conditions, any triclinic cell, cells smaller than the cutoff (several images of
the same neighbour) and atoms outside the cell (``benchmarks/RESULTS.md`` compares it with
matscipy and ASE).

Numerical safety (all documented limits are module constants):

* every coordinate and cell entry must be finite and at most :data:`MAX_COORDINATE` in magnitude,
  and a structure may span at most :data:`MAX_EXTENT` along any axis (periodic cell vectors
  included); beyond that :class:`StructureError` says so, never a crash in the compiled search;
* the search and the edge vectors work in a *local frame* (:func:`local_frame`): positions relative
  to a per-structure origin and wrapped into the cell along periodic axes, in float64. The graph
  stores these local positions and the matching integer shifts, and :func:`edge_vectors` forms
  ``pos[j] - pos[i] + S @ cell`` in float64 before any cast, so translating a structure by 1e8 A
  changes nothing beyond float64 round-off;
* the number of edges is estimated before the search (:func:`estimate_edges`) and a structure over
  ``max_edges`` is refused with :class:`BudgetError` in milliseconds;
* distances below a floor are refused: :data:`MIN_DISTANCE` always, and with ``min_distance_ratio``
  an element-aware floor (:func:`distance_floor`), with a logged warning below twice that floor.
"""

from __future__ import annotations

from .batch import AtomicGraph, batch_graphs, build_graph, edge_vectors
from .cache import NeighborListCache
from .frame import LocalFrame, local_frame, search_basis, search_box
from .neighbors import (
    DEFAULT_MAX_EDGES,
    DEFAULT_MIN_DISTANCE_RATIO,
    WARN_DISTANCE_FACTOR,
    check_distances,
    check_edge_budget,
    distance_floor,
    estimate_edges,
    neighbor_list,
)
from .structure import MAX_COORDINATE, MAX_EXTENT, MIN_DISTANCE, BudgetError, Structure, StructureError, structure_from_atoms

__all__ = [
    "StructureError",
    "BudgetError",
    "Structure",
    "AtomicGraph",
    "LocalFrame",
    "local_frame",
    "search_basis",
    "search_box",
    "neighbor_list",
    "structure_from_atoms",
    "build_graph",
    "batch_graphs",
    "edge_vectors",
    "estimate_edges",
    "check_edge_budget",
    "check_distances",
    "distance_floor",
    "NeighborListCache",
    "MIN_DISTANCE",
    "MAX_COORDINATE",
    "MAX_EXTENT",
    "DEFAULT_MAX_EDGES",
    "DEFAULT_MIN_DISTANCE_RATIO",
    "WARN_DISTANCE_FACTOR",
]
