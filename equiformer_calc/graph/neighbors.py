"""Neighbours: the edge estimate and budget, the distance floor, and the radius search (vesin's
compiled cell list) of one framed structure.

The number of edges is estimated before the search (:func:`estimate_edges`, a cheap binned density
count) and a structure over ``max_edges`` is refused with :class:`BudgetError` in milliseconds.
Distances below a floor are refused: :data:`MIN_DISTANCE` always, and with ``min_distance_ratio``
a physical, element-aware floor ``ratio * (r_cov(Z_i) + r_cov(Z_j))`` (covalent radii of
``ase.data``), with a logged warning below twice that floor. Every function that frames a
structure takes an already computed ``frame`` (:func:`~equiformer_calc.graph.frame.local_frame`).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from .frame import LocalFrame, local_frame, search_box
from .structure import MIN_DISTANCE, BudgetError, Structure, StructureError

__all__ = [
    "neighbor_list", "estimate_edges", "check_edge_budget", "distance_floor", "check_distances",
    "DEFAULT_MAX_EDGES", "DEFAULT_MIN_DISTANCE_RATIO", "WARN_DISTANCE_FACTOR",
]

log = logging.getLogger(__name__)

#: Default cap on the (estimated) number of edges of one structure in :func:`neighbor_list`: the
#: neighbour list alone needs ~50 bytes per edge (2.5 GB at this cap); callers that run a model
#: pass their own, much smaller, budget (see ``predictor.Predictor``).
DEFAULT_MAX_EDGES = 50_000_000
#: The element-aware distance floor used when a model is evaluated (``Predictor`` /
#: ``EquiformerCalculator(min_distance_ratio=...)``): a fraction of the sum of covalent radii.
DEFAULT_MIN_DISTANCE_RATIO = 0.25
#: With an element-aware floor, pairs closer than this many floors are logged as a warning.
WARN_DISTANCE_FACTOR = 2.0
#: the compiled cell list refuses to have more cells than this (vesin's ``MAX_NUMBER_OF_CELLS``)
_SEARCH_MAX_CELLS = 1e5


def _check_search_grid(frame: LocalFrame, pbc: np.ndarray, cutoff: float) -> None:
    """Refuse boxes the compiled cell list cannot bin (it crashes with SIGFPE on them).

    vesin sizes its grid as ``trunc(width / cutoff)`` cells per axis and, when that makes more than
    1e5 cells, rescales the three counts keeping their ratios; for a box that is both wide and
    flat (or needle-like) a count then truncates to zero and the search divides by it. This
    repeats that arithmetic on the search box (the bounding box along non-periodic axes, padded
    by 1% and at least 1 A wide, as vesin makes it) and refuses the structure before the call.
    """
    widths = np.where(pbc, frame.face_distances, np.maximum(np.where(frame.spans < 1e-6, 1.0, frame.spans) * 1.01, 1.0))
    n = np.maximum(np.trunc(widths / cutoff), 1.0)
    if n.prod() <= _SEARCH_MAX_CELLS:
        return
    ratio_xy, ratio_yz = n[0] / n[1], n[1] / n[2]
    nz = math.trunc(np.cbrt(_SEARCH_MAX_CELLS / (ratio_xy * ratio_yz * ratio_yz)))
    ny = math.trunc(ratio_yz * nz)
    nx = math.trunc(ratio_xy * ny)
    if min(nx, ny, nz) < 1:
        raise StructureError(
            f"the structure is too wide and flat for the neighbour search: search box "
            f"{widths[0]:.3g} x {widths[1]:.3g} x {widths[2]:.3g} A with a {cutoff:g} A cutoff "
            f"(wide periodic cell vectors around a thin non-periodic extent, or a sparse structure "
            f"spread over > ~1000 A); give a thicker box or fewer, closer atoms"
        )


def estimate_edges(structure: Structure, cutoff: float, frame: LocalFrame | None = None) -> int:
    """A cheap estimate of the number of edges ``neighbor_list(structure, cutoff)`` will return.

    Atoms are binned in the local frame (bins at least ``cutoff`` wide; a periodic axis shorter
    than that is one bin holding the whole cell, so periodic images count), and every atom is
    given the density of its own bin times the cutoff sphere's volume:
    ``sum_b n_b^2 * (4/3 pi r_c^3) / V_b``. O(N log N) time and O(N) memory; no pair is formed.
    It is exact in the mean for a homogeneous bulk and a tiny periodic cell; for slabs, molecules,
    clusters and wires it lies within 0.5-4x the count (``tests/test_budget.py``; thin wires are
    overestimated most, a slab in a 3D cell with vacuum underestimated by ~1.5x). A non-periodic
    axis narrower than the cutoff is counted as ``cutoff`` thick.
    """
    if frame is None:
        frame = local_frame(structure)
    n_atoms = len(structure)
    pbc = structure.pbc
    widths = np.where(pbc, frame.face_distances, np.maximum(frame.spans, cutoff))
    bins = np.clip(np.floor(widths / cutoff), 1, 1e5).astype(np.int64)
    # fractional coordinates in [0, 1) along every axis of the basis
    if pbc.any():
        frac = np.linalg.solve(frame.basis.T, frame.positions.T).T
    else:
        frac = frame.positions.copy()
    for k in np.flatnonzero(~pbc):
        frac[:, k] = (frac[:, k] - frac[:, k].min()) / widths[k]
    idx = np.clip(np.floor(frac * bins).astype(np.int64), 0, bins - 1)
    linear = (idx[:, 0] * bins[1] + idx[:, 1]) * bins[2] + idx[:, 2]
    _, counts = np.unique(linear, return_counts=True)
    counts = counts.astype(np.float64)
    box_volume = abs(np.linalg.det(frame.basis)) * float(np.prod(np.where(pbc, 1.0, widths)))
    sphere_per_bin = 4.0 / 3.0 * math.pi * cutoff**3 / (box_volume / float(np.prod(bins)))
    if pbc.any():  # an atom's own periodic images are edges too
        estimate = float(np.sum(counts**2)) * sphere_per_bin
    else:  # no self-pairs, and never more than all pairs
        estimate = min(float(np.sum(counts * (counts - 1))) * sphere_per_bin, float(n_atoms) * (n_atoms - 1))
    return int(max(estimate, 0.0))


def check_edge_budget(
    structure: Structure, cutoff: float, max_edges: int | None, frame: LocalFrame | None = None
) -> int:
    """The edge estimate of ``structure``; raises :class:`BudgetError` if it exceeds ``max_edges``."""
    estimate = estimate_edges(structure, cutoff, frame)
    if max_edges is not None and estimate > max_edges:
        raise BudgetError(
            f"{len(structure)} atoms with a {cutoff:g} A cutoff make about {estimate:,} edges "
            f"(estimated), over the limit of {int(max_edges):,} edges per structure; "
            f"use a smaller structure or a larger cell",
            estimate=estimate, limit=int(max_edges), unit="edges",
        )
    return estimate


def distance_floor(numbers_i: np.ndarray, numbers_j: np.ndarray, ratio: float) -> np.ndarray:
    """The shortest accepted distance of each pair: ``max(MIN_DISTANCE, ratio * (r_cov_i + r_cov_j))``
    with the covalent radii of ``ase.data`` (0.31 A for H, 1.32 A for Cu: with ratio 0.25 the floor
    is 0.155 A for H-H and 0.66 A for Cu-Cu)."""
    from ase.data import covalent_radii

    radii = np.asarray(covalent_radii)
    return np.maximum(MIN_DISTANCE, ratio * (radii[numbers_i] + radii[numbers_j]))


def check_distances(
    structure: Structure, i: np.ndarray, j: np.ndarray, d: np.ndarray, ratio: float
) -> None:
    """StructureError for a pair under the floor (:data:`MIN_DISTANCE` with ``ratio <= 0``, else
    :func:`distance_floor`), and with ``ratio > 0`` a logged warning for one under twice it."""
    if not d.size:
        return
    floor = distance_floor(structure.numbers[i], structure.numbers[j], ratio) if ratio > 0 else np.float64(MIN_DISTANCE)
    rel = d / floor
    k = int(np.argmin(rel))
    floor_k = float(np.broadcast_to(floor, d.shape)[k])
    if rel[k] < 1.0:
        from ase.data import chemical_symbols

        zi, zj = chemical_symbols[int(structure.numbers[i[k]])], chemical_symbols[int(structure.numbers[j[k]])]
        why = (f" ({ratio:g} x the sum of their covalent radii); lower min_distance_ratio to evaluate such close "
               "contacts anyway" if ratio > 0 else "")
        raise StructureError(
            f"atoms {int(i[k])} ({zi}) and {int(j[k])} ({zj}) overlap: distance {d[k]:.3g} A is below the "
            f"floor of {floor_k:.3g} A{why}"
        )
    if ratio > 0 and rel[k] < WARN_DISTANCE_FACTOR:
        log.warning(
            "atoms %d and %d are very close: %.3g A, %.2g x the distance floor of %.3g A",
            int(i[k]), int(j[k]), d[k], rel[k], floor_k,
        )


def neighbor_list(
    structure: Structure,
    cutoff: float,
    min_distance_ratio: float = 0.0,
    max_edges: int | None = DEFAULT_MAX_EDGES,
    frame: LocalFrame | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i, j, S) with ``|pos[j] - pos[i] + S @ cell| < cutoff``, i != j or S != 0.

    Returns int64 arrays ``i`` (N_e,), ``j`` (N_e,) and ``S`` (N_e, 3), sorted by ``i`` then ``j``
    (then ``S``, so the order is a function of the pair set only: see :class:`NeighborListCache`).
    ``S`` refers to the positions as given (not wrapped). Raises :class:`StructureError` for
    overlapping atoms (closer than ``MIN_DISTANCE``, or than the element-aware floor when
    ``min_distance_ratio > 0``, see :func:`distance_floor`) and for structures the search cannot
    handle, and :class:`BudgetError` when the edge estimate exceeds ``max_edges`` (checked before
    the search; ``None`` disables the check). ``frame``: the structure's
    :func:`~equiformer_calc.graph.frame.local_frame` when the caller has it already.
    """
    import vesin

    if not cutoff > 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    pbc = structure.pbc
    if frame is None:
        frame = local_frame(structure)
    check_edge_budget(structure, cutoff, max_edges, frame)
    _check_search_grid(frame, pbc, cutoff)
    # vesin wants a full-rank box with mixed pbc (and ignores it when nothing is periodic)
    box = search_box(frame, structure.cell, pbc, cutoff)
    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, shifts, d = calculator.compute(frame.positions, box, pbc.tolist(), "ijSd")
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    shifts = np.asarray(shifts, dtype=np.int64).reshape(-1, 3)
    d = np.asarray(d)
    if not pbc.all():
        shifts[:, ~pbc] = 0  # only meaningful along periodic axes
    check_distances(structure, i, j, d, min_distance_ratio)
    # back to the convention of the input positions: pos = origin + local + images @ cell
    shifts = shifts - frame.images[j] + frame.images[i]
    order = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], j, i))
    return i[order], j[order], shifts[order]
