"""Graphs as torch tensors: one structure's radius graph in its local frame (:func:`build_graph`),
the edge vectors formed in float64 (:func:`edge_vectors`), and batching of many graphs into one
disconnected graph (:func:`batch_graphs`).

Edges follow the convention of ``ase.neighborlist.neighbor_list``: for an edge ``(i, j, S)`` the
edge vector is ``pos[j] - pos[i] + S @ cell``; the message flows from the neighbour ``j`` (source)
to the centre ``i`` (destination). Only integer shifts are stored; the edge vectors themselves are
recomputed in torch from positions and cell, so forces and stress come from autograd.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from .frame import LocalFrame, local_frame
from .neighbors import DEFAULT_MAX_EDGES, neighbor_list
from .structure import Structure

if TYPE_CHECKING:
    from .cache import NeighborListCache

__all__ = ["AtomicGraph", "build_graph", "edge_vectors", "batch_graphs"]


@dataclass
class AtomicGraph:
    """One or many structures as a single disconnected graph, as torch tensors.

    numbers (N,) int64; positions (N, 3) in each structure's local frame (:func:`local_frame`);
    cell (B, 3, 3); pbc (B, 3) bool;
    edge_index (2, E) int64 with row 0 = source j (neighbour) and row 1 = destination i (centre);
    shifts (E, 3) integer-valued cell shifts in the positions' dtype; batch (N,) graph index
    of every atom; ptr (B + 1,) atom offsets; num_graphs B; tags (N,) int64 or None.
    """

    numbers: torch.Tensor
    positions: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    edge_index: torch.Tensor
    shifts: torch.Tensor
    batch: torch.Tensor
    ptr: torch.Tensor
    tags: torch.Tensor | None = None

    @property
    def num_graphs(self) -> int:
        return int(self.cell.shape[0])

    @property
    def num_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "AtomicGraph":
        """Move to a device; ``dtype`` applies to the floating tensors only."""
        def f(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device=device)

        return AtomicGraph(*(f(getattr(self, name)) for name in self.__dataclass_fields__))


def build_graph(
    structure: Structure,
    cutoff: float,
    dtype: torch.dtype = torch.float64,
    neighbors: "NeighborListCache | None" = None,
    min_distance_ratio: float = 0.0,
    max_edges: int | None = DEFAULT_MAX_EDGES,
    frame: LocalFrame | None = None,
) -> AtomicGraph:
    """The radius graph of one structure (a batch of one), in its local frame.

    ``positions`` are :func:`local_frame` positions (relative to the structure's origin, wrapped
    along periodic axes) and ``shifts`` refer to them: edge vectors, forces and stress are those of
    the input positions, only computed without large numbers. With ``neighbors`` (a
    :class:`NeighborListCache` owned by the caller for this structure) the edges come from its skin
    list when still valid; the graph is the same either way. ``min_distance_ratio`` and
    ``max_edges`` are passed to :func:`neighbor_list`. ``frame``: the structure's
    :func:`~equiformer_calc.graph.frame.local_frame` when the caller has it (computed here otherwise,
    once, and passed to the search).
    """
    if frame is None:
        frame = local_frame(structure)
    if neighbors is None:
        i, j, shifts = neighbor_list(structure, cutoff, min_distance_ratio, max_edges, frame)
    else:
        i, j, shifts = neighbors.edges(structure, cutoff, min_distance_ratio, max_edges, frame)
    local_shifts = shifts + frame.images[j] - frame.images[i]
    n = len(structure)
    return AtomicGraph(
        numbers=torch.from_numpy(structure.numbers.astype(np.int64)),
        positions=torch.tensor(frame.positions, dtype=dtype),
        cell=torch.tensor(structure.cell, dtype=dtype).unsqueeze(0),
        pbc=torch.tensor(structure.pbc, dtype=torch.bool).unsqueeze(0),
        edge_index=torch.from_numpy(np.stack([j, i])),
        shifts=torch.tensor(local_shifts, dtype=dtype),
        batch=torch.zeros(n, dtype=torch.int64),
        ptr=torch.tensor([0, n], dtype=torch.int64),
        tags=None if structure.tags is None else torch.from_numpy(structure.tags.astype(np.int64)),
    )


def edge_vectors(
    positions: torch.Tensor, edge_index: torch.Tensor, shifts: torch.Tensor, cell: torch.Tensor, batch: torch.Tensor
) -> torch.Tensor:
    """Edge vectors ``pos[j] - pos[i] + S @ cell`` (E, 3), differentiable in positions and cell.

    Computed in float64 whatever the inputs' dtype (the difference of two positions and the shift
    vector are formed before any rounding to the model's precision; cast the result, not the
    inputs). ``edge_index`` rows are [source j, destination i]; ``batch`` maps atoms to cells.
    """
    pos = positions.to(torch.float64)
    src, dst = edge_index[0], edge_index[1]
    vec = pos[src] - pos[dst]
    if shifts.numel():
        vec = vec + torch.einsum("ek,ekl->el", shifts.to(torch.float64), cell.to(torch.float64)[batch[dst]])
    return vec


def batch_graphs(graphs: Sequence[AtomicGraph]) -> AtomicGraph:
    """Concatenate graphs into one disconnected graph (node indices offset, batch vector set)."""
    if len(graphs) == 0:
        raise ValueError("cannot batch an empty list of graphs")
    if len(graphs) == 1:
        return graphs[0]
    counts = torch.tensor([g.num_atoms for g in graphs], dtype=torch.int64)
    offsets = torch.cumsum(counts, 0) - counts
    graph_counts = torch.tensor([g.num_graphs for g in graphs], dtype=torch.int64)
    batch_offsets = torch.cumsum(graph_counts, 0) - graph_counts  # graphs before each input
    return AtomicGraph(
        numbers=torch.cat([g.numbers for g in graphs]),
        positions=torch.cat([g.positions for g in graphs]),
        cell=torch.cat([g.cell for g in graphs]),
        pbc=torch.cat([g.pbc for g in graphs]),
        edge_index=torch.cat([g.edge_index + o for g, o in zip(graphs, offsets)], dim=1),
        shifts=torch.cat([g.shifts for g in graphs]),
        batch=torch.cat([g.batch + b for g, b in zip(graphs, batch_offsets)]),
        ptr=torch.cat([torch.zeros(1, dtype=torch.int64)] + [g.ptr[1:] + o for g, o in zip(graphs, offsets)]),
        tags=_batch_tags(graphs),
    )


def _batch_tags(graphs: Sequence[AtomicGraph]) -> torch.Tensor | None:
    """Concatenated tags; None when no graph has any; -1 (an invalid tag) for graphs without."""
    if all(g.tags is None for g in graphs):
        return None
    return torch.cat([g.tags if g.tags is not None else torch.full((g.num_atoms,), -1, dtype=torch.int64) for g in graphs])


