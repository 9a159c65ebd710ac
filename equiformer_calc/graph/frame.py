"""The local frame of one structure: positions relative to a per-structure origin, wrapped along
periodic axes, in float64, and the full-rank basis that the neighbour search works in.

A structure is framed once (:func:`local_frame`) and the frame is passed on to the edge estimate,
the neighbour search and the graph (see ``graph.neighbors`` and ``graph.batch``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .structure import MAX_EXTENT, Structure, StructureError

__all__ = ["LocalFrame", "local_frame", "search_basis", "search_box"]


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


def search_basis(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """The periodic cell vectors plus unit directions orthogonal to them for the non-periodic axes
    (the identity when nothing is periodic). The one place these directions are built: the local
    frame and the neighbour search's box (:func:`search_box`) both use it."""
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
    basis = search_basis(structure.cell, pbc)
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


def search_box(frame: LocalFrame, cell: np.ndarray, pbc: np.ndarray, cutoff: float) -> np.ndarray:
    """The box the compiled neighbour search gets for a framed structure: zeros when nothing is
    periodic (it ignores the box then), the cell when everything is, and for mixed pbc the frame's
    basis with its non-periodic unit directions stretched past the structure's extent (the search
    needs a full-rank, right-handed box; the pairs it finds do not depend on that length)."""
    if not pbc.any():
        return np.zeros((3, 3))
    if pbc.all():
        return cell
    positions = frame.positions
    extent = np.ptp(positions, axis=0).max() + np.abs(positions).max() + 2 * cutoff + 1.0
    box = frame.basis.copy()
    box[~pbc] *= extent
    if np.linalg.det(box) < 0:
        box[int(np.flatnonzero(~pbc)[-1])] *= -1
    return box
