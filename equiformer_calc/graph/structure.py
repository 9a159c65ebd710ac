"""Structure checks: the plain arrays of one structure, validated, and the two input errors.

Every coordinate and cell entry must be finite and at most :data:`MAX_COORDINATE` in magnitude, and
a periodic cell vector at most :data:`MAX_EXTENT` long; beyond that :class:`StructureError` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["StructureError", "BudgetError", "Structure", "structure_from_atoms", "MIN_DISTANCE", "MAX_COORDINATE", "MAX_EXTENT"]

#: Two atoms closer than this (in Angstrom) are always reported as overlapping, whatever the
#: element-aware floor (``min_distance_ratio``) says.
MIN_DISTANCE = 0.1
#: Largest accepted magnitude of any coordinate or cell entry (Angstrom). Positions are shifted to
#: a local origin in float64 (ulp 1.2e-7 A at this magnitude) before anything else happens.
MAX_COORDINATE = 1e9
#: Largest accepted span of a structure along any axis, and length of any periodic cell vector
#: (Angstrom; 10 micrometres).
MAX_EXTENT = 1e5


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

