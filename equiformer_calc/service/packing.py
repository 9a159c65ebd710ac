"""Structures and results as a few flat arrays, for crossing a process boundary cheaply.

Pickling 50,000 small :class:`~equiformer_calc.graph.Structure` objects is one C call that holds
the GIL for seconds, during which the server's event loop cannot answer ``/health``. Packed,
the same structures are five arrays (a memory copy to pickle); packing and unpacking are
Python loops over the structures, which give the GIL back to the event loop every few
milliseconds. The values are the same arrays, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..graph import Structure

__all__ = ["PackedStructures", "pack_structures", "unpack_structures", "pack_results", "unpack_results"]


@dataclass
class PackedStructures:
    """``counts[k]`` atoms of structure k are rows ``offsets[k]:offsets[k+1]`` of ``numbers`` and
    ``positions``; ``cells`` (S, 3, 3) and ``pbc`` (S, 3) per structure."""

    numbers: np.ndarray
    positions: np.ndarray
    cells: np.ndarray
    pbc: np.ndarray
    counts: np.ndarray
    #: concatenated tags of the structures that have them (``has_tags``), else None
    tags: np.ndarray | None = None
    has_tags: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.counts.shape[0])


def pack_structures(structures: Sequence[Structure]) -> PackedStructures:
    """Concatenate validated structures."""
    n = len(structures)
    counts = np.fromiter((len(s) for s in structures), dtype=np.int64, count=n)
    if n == 0:
        return PackedStructures(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3, 3)),
                                np.zeros((0, 3), bool), counts)
    any_tags = any(s.tags is not None for s in structures)
    return PackedStructures(
        numbers=np.concatenate([s.numbers for s in structures]),
        positions=np.concatenate([s.positions for s in structures]),
        cells=np.stack([s.cell for s in structures]),
        pbc=np.stack([s.pbc for s in structures]),
        counts=counts,
        tags=np.concatenate([s.tags for s in structures if s.tags is not None]) if any_tags else None,
        has_tags=np.array([s.tags is not None for s in structures]) if any_tags else None,
    )


def unpack_structures(packed: PackedStructures) -> list[Structure]:
    """The structures again (each a copy of its rows, so it holds no reference to the rest)."""
    offsets = np.concatenate([[0], np.cumsum(packed.counts)])
    out: list[Structure] = []
    t = 0
    for k in range(len(packed)):
        a, b = int(offsets[k]), int(offsets[k + 1])
        tags = None
        if packed.has_tags is not None and packed.has_tags[k]:
            assert packed.tags is not None
            tags, t = packed.tags[t:t + b - a].copy(), t + b - a
        out.append(Structure(packed.numbers[a:b].copy(), packed.positions[a:b].copy(), packed.cells[k].copy(),
                             packed.pbc[k].copy(), tags))
    return out


def pack_results(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result dict per structure -> {"n", key: values}: energies as a list of floats, stress
    stacked (S, 6), per-atom arrays (forces, energies) concatenated with their lengths; a committee's
    ``energy_uncertainty`` (floats) and ``energy_committee`` (stacked (S, M)) like energy and stress."""
    packed: dict[str, Any] = {"n": len(results)}
    for key in (results[0] if results else ()):
        values = [r[key] for r in results]
        if key in ("energy", "free_energy", "energy_uncertainty"):
            packed[key] = values  # floats, kept as they are
        elif key in ("stress", "energy_committee"):
            packed[key] = np.stack([np.asarray(v) for v in values])
        else:
            packed[key] = (np.concatenate([np.asarray(v) for v in values]),
                           np.array([len(v) for v in values], dtype=np.int64))
    return packed


def unpack_results(packed: dict[str, Any]) -> list[dict[str, Any]]:
    """The inverse of :func:`pack_results` (per-atom arrays are views of the concatenation)."""
    out: list[dict[str, Any]] = [{} for _ in range(packed["n"])]
    for key, values in packed.items():
        if key == "n":
            continue
        if key in ("energy", "free_energy", "energy_uncertainty", "stress", "energy_committee"):
            for r, v in zip(out, values):
                r[key] = v
            continue
        flat, lengths = values
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        for k, r in enumerate(out):
            r[key] = flat[int(offsets[k]):int(offsets[k + 1])]
    return out
