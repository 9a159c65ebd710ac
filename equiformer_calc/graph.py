"""Radius graphs of atomic structures, and batching of many graphs into one.

This module turns positions / cell / pbc into an edge list and knows nothing of the network.
Edges follow the convention of ``ase.neighborlist.neighbor_list``: for an edge ``(i, j, S)``
the edge vector is ``pos[j] - pos[i] + S @ cell``; the message flows from the neighbour ``j``
(source) to the centre ``i`` (destination). Only integer shifts are stored; the edge vectors
themselves are recomputed in torch from positions and cell, so forces and stress come from
autograd.

The neighbour search is vesin's compiled cell list (linear in the number of atoms; see
``benchmarks/RESULTS.md`` for the comparison with matscipy and ASE that motivated the choice).
It handles non-periodic, fully periodic and mixed boundary conditions, any triclinic cell,
cells smaller than the cutoff (several images of the same neighbour) and atoms outside the cell.

Numerical safety (all documented limits are module constants):

* every coordinate and cell entry must be finite and at most :data:`MAX_COORDINATE` in magnitude,
  and a structure may span at most :data:`MAX_EXTENT` along any axis (periodic cell vectors
  included); beyond that :class:`StructureError` says so, never a crash in the compiled search;
* the search and the edge vectors work in a *local frame* (:func:`local_frame`): positions relative
  to a per-structure origin and wrapped into the cell along periodic axes, in float64. The graph
  stores these local positions and the matching integer shifts, and :func:`edge_vectors` forms
  ``pos[j] - pos[i] + S @ cell`` in float64 before any cast, so translating a structure by 1e8 A
  changes nothing beyond float64 round-off;
* the number of edges is estimated before the search (:func:`estimate_edges`, a cheap binned density
  count) and a structure over ``max_edges`` is refused with :class:`BudgetError` in milliseconds;
* distances below a floor are refused: :data:`MIN_DISTANCE` always, and with ``min_distance_ratio``
  a physical, element-aware floor ``ratio * (r_cov(Z_i) + r_cov(Z_j))`` (covalent radii of
  ``ase.data``), with a logged warning below twice that floor.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

__all__ = [
    "StructureError",
    "BudgetError",
    "Structure",
    "AtomicGraph",
    "LocalFrame",
    "local_frame",
    "neighbor_list",
    "structure_from_atoms",
    "build_graph",
    "batch_graphs",
    "edge_vectors",
    "estimate_edges",
    "check_edge_budget",
    "distance_floor",
    "NeighborListCache",
    "MIN_DISTANCE",
    "MAX_COORDINATE",
    "MAX_EXTENT",
    "DEFAULT_MAX_EDGES",
    "DEFAULT_MIN_DISTANCE_RATIO",
    "WARN_DISTANCE_FACTOR",
]

log = logging.getLogger(__name__)

#: Two atoms closer than this (in Angstrom) are always reported as overlapping, whatever the
#: element-aware floor (``min_distance_ratio``) says.
MIN_DISTANCE = 0.1
#: Largest accepted magnitude of any coordinate or cell entry (Angstrom). Positions are shifted to
#: a local origin in float64 (ulp 1.2e-7 A at this magnitude) before anything else happens.
MAX_COORDINATE = 1e9
#: Largest accepted span of a structure along any axis, and length of any periodic cell vector
#: (Angstrom; 10 micrometres).
MAX_EXTENT = 1e5
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


class StructureError(ValueError):
    """An input structure that cannot be evaluated; the message names the problem."""


class BudgetError(StructureError, MemoryError):
    """A structure (or a batch) whose estimated size exceeds a budget: ``estimate`` and ``limit``
    (in ``unit``: "edges" or "bytes") are attributes and appear in the message. It is both a
    :class:`StructureError` (bad input) and a :class:`MemoryError` (what it prevents)."""

    def __init__(self, message: str, estimate: float, limit: float, unit: str) -> None:
        super().__init__(message)
        self.estimate = estimate
        self.limit = limit
        self.unit = unit

    def __reduce__(self):  # pickles with its attributes (errors cross process boundaries in the service)
        return (type(self), (str(self), self.estimate, self.limit, self.unit))


@dataclass
class Structure:
    """The plain arrays that describe one structure (no ASE needed).

    numbers: (N,) atomic numbers; positions: (N, 3) Angstrom; cell: (3, 3) rows are lattice
    vectors (may be zero for non-periodic systems); pbc: (3,) bools; tags: (N,) integer tags or
    None (read only by models that embed tags, e.g. OC20's 0/1/2 = subsurface/surface/adsorbate).
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    tags: np.ndarray | None = None

    @classmethod
    def from_arrays(
        cls,
        numbers: Sequence[int] | np.ndarray,
        positions: Sequence[Sequence[float]] | np.ndarray,
        cell: Sequence[Sequence[float]] | np.ndarray | None = None,
        pbc: Sequence[bool] | bool | np.ndarray = False,
        tags: Sequence[int] | np.ndarray | None = None,
    ) -> "Structure":
        """Build and validate a structure from array-likes; raises :class:`StructureError`."""
        try:
            numbers_arr = np.asarray(numbers)
            positions_arr = np.asarray(positions, dtype=np.float64)
            cell_arr = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
            pbc_arr = np.asarray(pbc, dtype=bool)
        except (TypeError, ValueError) as exc:
            raise StructureError(f"could not read the structure's arrays: {exc}") from None
        if pbc_arr.ndim == 0:
            pbc_arr = np.repeat(pbc_arr, 3)
        if numbers_arr.size == 0 and positions_arr.size == 0:
            positions_arr = positions_arr.reshape(0, 3)
        if numbers_arr.ndim != 1:
            raise StructureError(f"numbers must be a 1-D list of atomic numbers, got shape {numbers_arr.shape}")
        if numbers_arr.size and not np.issubdtype(numbers_arr.dtype, np.integer):
            if not np.all(np.isfinite(numbers_arr)) or not np.all(np.mod(numbers_arr, 1) == 0):
                raise StructureError("numbers must be integers (atomic numbers)")
        numbers_arr = numbers_arr.astype(np.int64)
        if positions_arr.ndim != 2 or positions_arr.shape[1] != 3:
            raise StructureError(f"positions must have shape (N, 3), got {positions_arr.shape}")
        if positions_arr.shape[0] != numbers_arr.shape[0]:
            raise StructureError(
                f"{numbers_arr.shape[0]} atomic numbers but {positions_arr.shape[0]} positions"
            )
        if cell_arr.shape == (3,):
            cell_arr = np.diag(cell_arr)
        if cell_arr.shape != (3, 3):
            raise StructureError(f"cell must have shape (3, 3), got {cell_arr.shape}")
        if pbc_arr.shape != (3,):
            raise StructureError(f"pbc must be one bool or three bools, got shape {pbc_arr.shape}")
        tags_arr = None
        if tags is not None:
            tags_arr = np.asarray(tags)
            if tags_arr.shape != numbers_arr.shape or (tags_arr.size and not np.issubdtype(tags_arr.dtype, np.integer)):
                raise StructureError(f"tags must be {numbers_arr.shape[0]} integers, got shape {tags_arr.shape}")
            tags_arr = tags_arr.astype(np.int64)
        structure = cls(numbers_arr, positions_arr, cell_arr, pbc_arr, tags_arr)
        structure.validate()
        return structure

    def __len__(self) -> int:
        return int(self.numbers.shape[0])

    def validate(self) -> None:
        """Raise :class:`StructureError` if the structure cannot be evaluated."""
        n = len(self)
        if n == 0:
            raise StructureError("the structure has no atoms")
        if np.any(self.numbers < 1) or np.any(self.numbers > 118):
            bad = sorted(set(int(z) for z in self.numbers if z < 1 or z > 118))
            raise StructureError(f"invalid atomic numbers {bad}: must be between 1 and 118")
        finite = np.isfinite(self.positions).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)[:10].tolist()
            raise StructureError(f"positions contain NaN or inf (atoms {bad})")
        if not np.isfinite(self.cell).all():
            raise StructureError("the cell contains NaN or inf")
        big = np.abs(self.positions).max(axis=1) > MAX_COORDINATE
        if big.any():
            bad = np.flatnonzero(big)[:10].tolist()
            raise StructureError(
                f"positions of atoms {bad} exceed {MAX_COORDINATE:.0e} A in magnitude (largest "
                f"{np.abs(self.positions).max():.3g} A); translate the structure closer to the origin"
            )
        lengths = np.linalg.norm(self.cell, axis=1)
        if np.abs(self.cell).max() > MAX_COORDINATE or (self.pbc & (lengths > MAX_EXTENT)).any():
            axis = int(np.argmax(np.where(self.pbc, lengths, np.abs(self.cell).max(axis=1))))
            raise StructureError(
                f"cell vector {axis} is {lengths[axis]:.3g} A long; periodic cell vectors may be at most "
                f"{MAX_EXTENT:.0e} A (and cell entries {MAX_COORDINATE:.0e} A)"
            )
        if self.pbc.any():
            lengths = np.linalg.norm(self.cell, axis=1)
            for axis in np.flatnonzero(self.pbc):
                if lengths[axis] < 1e-6:
                    raise StructureError(
                        f"pbc is True along axis {axis} but cell vector {axis} is zero; "
                        "set a cell or turn pbc off for that axis"
                    )
            # the periodic vectors (and, for 3-D pbc, all three) must be linearly independent
            periodic = self.cell[self.pbc]
            sing = np.linalg.svd(periodic, compute_uv=False)
            if sing[-1] < 1e-6 * max(sing[0], 1.0):
                raise StructureError(
                    "the cell is degenerate (its periodic vectors are linearly dependent, volume ~ 0)"
                )
            if self.pbc.all() and abs(np.linalg.det(self.cell)) < 1e-6:
                raise StructureError("the cell volume is zero with pbc=True")


def structure_from_atoms(atoms) -> Structure:
    """Read numbers / positions / cell / pbc (and tags, when the Atoms has them) out of an
    ``ase.Atoms`` and validate them."""
    return Structure.from_arrays(
        atoms.get_atomic_numbers(), atoms.get_positions(), atoms.cell.array, atoms.pbc, atoms.arrays.get("tags")
    )


@dataclass
class LocalFrame:
    """A structure's positions in a numerically safe frame (float64).

    ``positions`` (N, 3) are relative to ``origin`` (3,) and wrapped into the cell along periodic
    axes; ``images`` (N, 3) int64 counts the cell vectors removed, so that the input positions are
    ``origin + positions + images @ cell``. ``basis`` (3, 3) is a full-rank frame: the periodic
    cell vectors plus unit vectors orthogonal to them for the non-periodic axes; ``spans`` (3,)
    the extent of the positions along each basis axis (fractional for periodic axes, Angstrom for
    the others), and ``face_distances`` (3,) the widths that a cell list over this frame has.
    """

    positions: np.ndarray
    images: np.ndarray
    origin: np.ndarray
    basis: np.ndarray
    spans: np.ndarray
    face_distances: np.ndarray


def _search_basis(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Periodic cell vectors plus orthonormal directions for the non-periodic axes."""
    basis = np.eye(3)
    if not pbc.any():
        return basis
    basis = cell.copy()
    periodic = cell[pbc]
    if pbc.sum() == 2:
        normal = np.cross(periodic[0], periodic[1])
        basis[int(np.flatnonzero(~pbc)[0])] = normal / np.linalg.norm(normal)
    elif pbc.sum() == 1:
        a = periodic[0] / np.linalg.norm(periodic[0])
        b = np.cross(a, np.eye(3)[np.argmin(np.abs(a))])
        b /= np.linalg.norm(b)
        others = np.flatnonzero(~pbc)
        basis[others[0]] = b
        basis[others[1]] = np.cross(a, b)
    return basis


def local_frame(structure: Structure) -> LocalFrame:
    """Positions relative to a per-structure origin, wrapped along periodic axes (see
    :class:`LocalFrame`). The origin is the centre of the structure's extent along non-periodic
    axes and 0 along periodic ones. Raises :class:`StructureError` when the structure spans more
    than :data:`MAX_EXTENT` along an axis."""
    pos = structure.positions
    pbc = structure.pbc
    basis = _search_basis(structure.cell, pbc)
    frac = pos if not pbc.any() else np.linalg.solve(basis.T, pos.T).T
    lo, hi = frac.min(axis=0), frac.max(axis=0)
    centre = np.where(pbc, 0.0, 0.5 * (lo + hi))
    images = np.zeros(pos.shape, dtype=np.int64)
    if pbc.any():
        images[:, pbc] = np.floor(frac[:, pbc]).astype(np.int64)
    origin = centre @ basis
    local = pos - origin - images @ structure.cell if pbc.any() else pos - origin
    spans = hi - lo
    # widths of the cell-list box: periodic axes span the cell, the others the atoms' extent
    volume = abs(np.linalg.det(basis))
    faces = np.array([volume / np.linalg.norm(np.cross(basis[(k + 1) % 3], basis[(k + 2) % 3])) for k in range(3)])
    widths = np.where(pbc, faces, spans)
    too_wide = (~pbc) & (spans > MAX_EXTENT)
    if too_wide.any():
        axis = int(np.flatnonzero(too_wide)[0])
        raise StructureError(
            f"the atoms span {spans[axis]:.3g} A along "
            f"{'xyz'[axis] if not pbc.any() else f'non-periodic axis {axis}'}; "
            f"at most {MAX_EXTENT:.0e} A is accepted (is an atom far away by mistake?)"
        )
    return LocalFrame(local, images, origin, basis, spans, widths)


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


def _check_distances(
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
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i, j, S) with ``|pos[j] - pos[i] + S @ cell| < cutoff``, i != j or S != 0.

    Returns int64 arrays ``i`` (N_e,), ``j`` (N_e,) and ``S`` (N_e, 3), sorted by ``i`` then ``j``
    (then ``S``, so the order is a function of the pair set only: see :class:`NeighborListCache`).
    ``S`` refers to the positions as given (not wrapped). Raises :class:`StructureError` for
    overlapping atoms (closer than ``MIN_DISTANCE``, or than the element-aware floor when
    ``min_distance_ratio > 0``, see :func:`distance_floor`) and for structures the search cannot
    handle, and :class:`BudgetError` when the edge estimate exceeds ``max_edges`` (checked before
    the search; ``None`` disables the check).
    """
    import vesin

    if not cutoff > 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    pbc = structure.pbc
    frame = local_frame(structure)
    check_edge_budget(structure, cutoff, max_edges, frame)
    _check_search_grid(frame, pbc, cutoff)
    positions = frame.positions
    cell = structure.cell
    if not pbc.any():
        # vesin wants a box even when nothing is periodic and ignores it: use zeros
        cell = np.zeros((3, 3))
    elif not pbc.all():
        # mixed pbc: non-periodic axes may have a zero or arbitrary vector; vesin needs a full-rank box
        cell = _complete_cell(cell, pbc, positions, cutoff)
    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, shifts, d = calculator.compute(positions, cell, pbc.tolist(), "ijSd")
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    shifts = np.asarray(shifts, dtype=np.int64).reshape(-1, 3)
    d = np.asarray(d)
    if not pbc.all():
        shifts[:, ~pbc] = 0  # only meaningful along periodic axes
    _check_distances(structure, i, j, d, min_distance_ratio)
    # back to the convention of the input positions: pos = origin + local + images @ cell
    shifts = shifts - frame.images[j] + frame.images[i]
    order = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], j, i))
    return i[order], j[order], shifts[order]


def _complete_cell(cell: np.ndarray, pbc: np.ndarray, positions: np.ndarray, cutoff: float) -> np.ndarray:
    """Replace non-periodic cell vectors by long vectors orthogonal to the periodic ones."""
    cell = cell.copy()
    periodic = cell[pbc]
    extent = np.ptp(positions, axis=0).max() + np.abs(positions).max() + 2 * cutoff + 1.0
    if pbc.sum() == 2:
        normal = np.cross(periodic[0], periodic[1])
        normal /= np.linalg.norm(normal)
        axis = int(np.flatnonzero(~pbc)[0])
        candidate = cell[axis]
        # keep the user's vector if it is already a valid, long enough third axis
        if not (np.linalg.norm(candidate) > 0 and abs(candidate @ normal) > 1e-6 * np.linalg.norm(candidate)):
            cell[axis] = normal * extent
        return cell
    # one periodic axis: build two orthogonal directions
    axis_p = int(np.flatnonzero(pbc)[0])
    a = periodic[0] / np.linalg.norm(periodic[0])
    trial = np.eye(3)[np.argmin(np.abs(a))]
    b = np.cross(a, trial)
    b /= np.linalg.norm(b)
    c = np.cross(a, b)
    others = [k for k in range(3) if k != axis_p]
    cell[others[0]] = b * extent
    cell[others[1]] = c * extent
    if np.linalg.det(cell) < 0:
        cell[others[1]] *= -1
    return cell


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

    def to_pyg(self) -> Any:
        """This graph as a PyTorch Geometric ``Data`` (one structure) or ``Batch`` (several).

        Fields: ``pos`` (N, 3), ``z`` and ``atomic_numbers`` (N,), ``cell`` (B, 3, 3), ``pbc``
        (B, 3), ``edge_index`` (2, E; row 0 = source j, row 1 = target i, PyG's own convention),
        ``cell_offsets`` (E, 3), ``natoms`` (B,), and ``tags`` (N,; -1 where a structure has none). One-structure ``Data`` objects collate into the
        same ``Batch`` (``torch_geometric.loader.DataLoader``). Needs ``torch_geometric``.
        """
        from torch_geometric.data import Batch, Data

        graphs = []
        # every Data carries tags (-1: none, as in batch_graphs) so that any mix of them collates
        untagged = torch.full_like(self.numbers, -1)
        for b in range(self.num_graphs):
            lo, hi = int(self.ptr[b]), int(self.ptr[b + 1])
            mask = (self.edge_index[1] >= lo) & (self.edge_index[1] < hi)
            graphs.append(
                Data(
                    pos=self.positions[lo:hi], z=self.numbers[lo:hi], atomic_numbers=self.numbers[lo:hi],
                    cell=self.cell[b : b + 1], pbc=self.pbc[b : b + 1], edge_index=self.edge_index[:, mask] - lo,
                    cell_offsets=self.shifts[mask], natoms=torch.tensor([hi - lo]), num_nodes=hi - lo,
                    tags=untagged[lo:hi] if self.tags is None else self.tags[lo:hi],
                )
            )
        return graphs[0] if len(graphs) == 1 else Batch.from_data_list(graphs)

    @classmethod
    def from_pyg(cls, data: Any) -> "AtomicGraph":
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
        return cls(
            numbers=numbers.long(), positions=positions, cell=cell.to(positions.dtype), pbc=pbc,
            edge_index=edge_index.long(), shifts=shifts.to(positions.dtype), batch=batch.long(), ptr=ptr,
            tags=None if field("tags") is None or bool((field("tags") < 0).all()) else field("tags").long(),
        )


def build_graph(
    structure: Structure,
    cutoff: float,
    dtype: torch.dtype = torch.float64,
    neighbors: "NeighborListCache | None" = None,
    min_distance_ratio: float = 0.0,
    max_edges: int | None = DEFAULT_MAX_EDGES,
) -> AtomicGraph:
    """The radius graph of one structure (a batch of one), in its local frame.

    ``positions`` are :func:`local_frame` positions (relative to the structure's origin, wrapped
    along periodic axes) and ``shifts`` refer to them: edge vectors, forces and stress are those of
    the input positions, only computed without large numbers. With ``neighbors`` (a
    :class:`NeighborListCache` owned by the caller for this structure) the edges come from its skin
    list when still valid; the graph is the same either way. ``min_distance_ratio`` and
    ``max_edges`` are passed to :func:`neighbor_list`.
    """
    if neighbors is None:
        i, j, shifts = neighbor_list(structure, cutoff, min_distance_ratio, max_edges)
    else:
        i, j, shifts = neighbors.edges(structure, cutoff, min_distance_ratio, max_edges)
    frame = local_frame(structure)
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
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(i, j, S)`` exactly as :func:`neighbor_list(structure, cutoff, ...) <neighbor_list>`
        returns them (same pairs, same order, same errors for overlapping atoms and budgets)."""
        cutoff = float(cutoff)
        if self._valid_for(structure, cutoff):
            self.reuses += 1
        else:
            check_edge_budget(structure, cutoff, max_edges)
            self._pairs = neighbor_list(structure, cutoff + self.skin)
            self._positions = structure.positions.copy()
            self._key = (structure.numbers.copy(), structure.cell.copy(), structure.pbc.copy(), cutoff)
            self.builds += 1
        i, j, shifts = self._pairs  # type: ignore[misc]
        vectors = structure.positions[j] - structure.positions[i] + shifts @ structure.cell
        d = np.linalg.norm(vectors, axis=1)
        keep = d < cutoff
        _check_distances(structure, i[keep], j[keep], d[keep], min_distance_ratio)
        return i[keep], j[keep], shifts[keep]
