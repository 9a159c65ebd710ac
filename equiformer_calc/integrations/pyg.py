"""PyTorch Geometric: an :class:`~equiformer_calc.graph.AtomicGraph` as a PyG ``Data``/``Batch``
(:func:`to_pyg`) and back (:func:`from_pyg`), so that PyG data loaders and models can use our graphs
and the model can take a PyG batch (``model(batch)``).

``from_pyg`` reads fields only (no import of ``torch_geometric``); ``to_pyg`` needs the ``[pyg]`` extra.
"""

from __future__ import annotations

from typing import Any

import torch

from ..graph import AtomicGraph

__all__ = ["to_pyg", "from_pyg"]


def to_pyg(graph: AtomicGraph) -> Any:
    """``graph`` as a PyTorch Geometric ``Data`` (one structure) or ``Batch`` (several).

    Fields: ``pos`` (N, 3), ``z`` and ``atomic_numbers`` (N,), ``cell`` (B, 3, 3), ``pbc``
    (B, 3), ``edge_index`` (2, E; row 0 = source j, row 1 = target i, PyG's own convention),
    ``cell_offsets`` (E, 3), ``natoms`` (B,), and ``tags`` (N,; -1 where a structure has none). One-structure ``Data`` objects collate into the
    same ``Batch`` (``torch_geometric.loader.DataLoader``). Needs ``torch_geometric``.
    """
    from torch_geometric.data import Batch, Data

    graphs = []
    # every Data carries tags (-1: none, as in batch_graphs) so that any mix of them collates
    untagged = torch.full_like(graph.numbers, -1)
    for b in range(graph.num_graphs):
        lo, hi = int(graph.ptr[b]), int(graph.ptr[b + 1])
        mask = (graph.edge_index[1] >= lo) & (graph.edge_index[1] < hi)
        graphs.append(
            Data(
                pos=graph.positions[lo:hi], z=graph.numbers[lo:hi], atomic_numbers=graph.numbers[lo:hi],
                cell=graph.cell[b : b + 1], pbc=graph.pbc[b : b + 1], edge_index=graph.edge_index[:, mask] - lo,
                cell_offsets=graph.shifts[mask], natoms=torch.tensor([hi - lo]), num_nodes=hi - lo,
                tags=untagged[lo:hi] if graph.tags is None else graph.tags[lo:hi],
            )
        )
    return graphs[0] if len(graphs) == 1 else Batch.from_data_list(graphs)


def from_pyg(data: Any) -> AtomicGraph:
    """An :class:`AtomicGraph` from a PyG ``Data`` / ``Batch`` with ``pos``, ``z`` or
    ``atomic_numbers``, ``edge_index`` and ``cell_offsets``; ``cell`` ((3, 3) or (B, 3, 3)) and
    ``pbc`` are optional (absent: a non-periodic structure). The edge convention is PyG's
    (row 0 = source). Missing fields are a clear ``ValueError``."""
    def field(*names: str) -> torch.Tensor | None:
        for name in names:
            value = getattr(data, name, None)
            if value is not None:
                return value
        return None

    positions = field("pos")
    numbers = field("z", "atomic_numbers")
    edge_index = field("edge_index")
    if positions is None or numbers is None or edge_index is None:
        missing = [n for n, v in (("pos", positions), ("z/atomic_numbers", numbers), ("edge_index", edge_index)) if v is None]
        raise ValueError(f"the PyG data lacks {', '.join(missing)}")
    n = int(positions.shape[0])
    batch = field("batch")
    if batch is None:
        batch = torch.zeros(n, dtype=torch.int64, device=positions.device)
    num_graphs = int(getattr(data, "num_graphs", 1) or 1) if field("batch") is not None else 1
    shifts = field("cell_offsets")
    if shifts is None:
        shifts = torch.zeros((edge_index.shape[1], 3), dtype=positions.dtype, device=positions.device)
    cell = field("cell")
    cell = torch.zeros((num_graphs, 3, 3), dtype=positions.dtype, device=positions.device) if cell is None else cell.reshape(-1, 3, 3)
    pbc = field("pbc")
    pbc = torch.zeros((num_graphs, 3), dtype=torch.bool, device=positions.device) if pbc is None else pbc.reshape(-1, 3).bool()
    if cell.shape[0] != num_graphs or pbc.shape[0] != num_graphs:
        raise ValueError(f"the PyG data has {num_graphs} graphs but cell {tuple(cell.shape)} and pbc {tuple(pbc.shape)}")
    counts = torch.bincount(batch, minlength=num_graphs)
    ptr = torch.cat([torch.zeros(1, dtype=torch.int64, device=counts.device), torch.cumsum(counts, 0)])
    return AtomicGraph(
        numbers=numbers.long(), positions=positions, cell=cell.to(positions.dtype), pbc=pbc,
        edge_index=edge_index.long(), shifts=shifts.to(positions.dtype), batch=batch.long(), ptr=ptr,
        tags=None if field("tags") is None or bool((field("tags") < 0).all()) else field("tags").long(),
    )
