"""The skin cache: a Verlet-skin neighbour list of one structure reused between calls (MD,
relaxations) with the same edges as a fresh search."""

from __future__ import annotations

import numpy as np

from .frame import LocalFrame
from .neighbors import DEFAULT_MAX_EDGES, check_distances, check_edge_budget, neighbor_list
from .structure import Structure

__all__ = ["NeighborListCache"]


class NeighborListCache:
    """Verlet-skin neighbour list of one structure that changes a little between calls (MD,
    relaxations): the pair search runs with ``cutoff + skin`` and is redone only when an atom
    moved more than ``skin / 2`` since the last search, or the cell, pbc, atoms or cutoff
    changed. In between, the stored candidate pairs are filtered down to ``|r| < cutoff`` with
    the current positions, so :meth:`edges` returns exactly the pairs of
    ``neighbor_list(structure, cutoff)``, in the same order: the model sees the same graph and
    gives the same numbers as with a fresh search every call.

    Why it is exact: a pair within the cutoff now was within ``cutoff + skin`` at the last search,
    since each of its two atoms moved by at most ``skin / 2`` (positions are compared unwrapped,
    so an atom wrapped back into the cell counts as a large move and triggers a new search).
    Pairs between ``cutoff`` and ``cutoff + skin`` would contribute exactly zero anyway (the
    model's envelope is identically 0 at and beyond the cutoff) but are dropped so the model does
    not pay for them. Use one cache per structure; ``builds`` / ``reuses`` count the searches
    done and avoided.
    """

    def __init__(self, skin: float = 1.0) -> None:
        if not skin > 0:
            raise ValueError(f"skin must be positive, got {skin}")
        self.skin = float(skin)
        self.builds = 0
        self.reuses = 0
        self._key: tuple | None = None
        self._positions: np.ndarray | None = None
        self._pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def reset(self) -> None:
        """Forget the stored list (the next call searches again)."""
        self._key = None
        self._positions = None
        self._pairs = None

    def _valid_for(self, structure: Structure, cutoff: float) -> bool:
        if self._pairs is None or self._positions is None or self._key is None:
            return False
        numbers, cell, pbc, cut = self._key
        if cut != cutoff or len(structure) != len(numbers):
            return False
        if not (np.array_equal(structure.numbers, numbers) and np.array_equal(structure.pbc, pbc)):
            return False
        if not np.array_equal(structure.cell, cell):
            return False
        moved = np.linalg.norm(structure.positions - self._positions, axis=1)
        return bool(moved.max(initial=0.0) <= 0.5 * self.skin)

    def edges(
        self,
        structure: Structure,
        cutoff: float,
        min_distance_ratio: float = 0.0,
        max_edges: int | None = DEFAULT_MAX_EDGES,
        frame: LocalFrame | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(i, j, S)`` exactly as :func:`neighbor_list(structure, cutoff, ...) <neighbor_list>`
        returns them (same pairs, same order, same errors for overlapping atoms and budgets).
        ``frame``: the structure's local frame when the caller has it (used by a new search)."""
        cutoff = float(cutoff)
        if self._valid_for(structure, cutoff):
            self.reuses += 1
        else:
            check_edge_budget(structure, cutoff, max_edges, frame)
            self._pairs = neighbor_list(structure, cutoff + self.skin, frame=frame)
            self._positions = structure.positions.copy()
            self._key = (structure.numbers.copy(), structure.cell.copy(), structure.pbc.copy(), cutoff)
            self.builds += 1
        i, j, shifts = self._pairs  # type: ignore[misc]
        vectors = structure.positions[j] - structure.positions[i] + shifts @ structure.cell
        d = np.linalg.norm(vectors, axis=1)
        keep = d < cutoff
        check_distances(structure, i[keep], j[keep], d[keep], min_distance_ratio)
        return i[keep], j[keep], shifts[keep]
