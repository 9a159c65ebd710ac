"""Slabs: fcc surfaces built with ASE, slabs of any origin in one standard frame, and which atoms
are held fixed.

* :func:`build_surface` (named screening surfaces) and :func:`build_slab` (data generation: bottom half
  fixed, OC20 tags) share one builder over ASE's ``fcc111`` / ``fcc100`` / ``fcc110`` / ``fcc211``.
* :func:`slab_from_any`: ASE ``Atoms`` or a pymatgen ``Structure`` / ``Slab`` -> an ASE slab with the
  surface normal along +z.
* Fixed atoms, one definition each: :func:`fixed_mask` (held by FixAtoms), :func:`held_mask` (the
  per-atom ``fixed`` array of a dataset frame where present, else FixAtoms), :func:`layer_indices` /
  :func:`bottom_fixed_mask` / :func:`add_fix_bottom` (the lowest layers, or everything below a height),
  and :func:`oc20_tags` (0 subsurface, 1 surface, 2 adsorbate).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from ase import Atoms
from ase.build import fcc100, fcc110, fcc111, fcc211
from ase.constraints import FixAtoms

from .catalogue import lattice_constant

__all__ = [
    "FACETS", "SLAB_VACUUM", "LAYER_TOLERANCE", "facet_name", "build_surface", "build_slab", "slab_from_any",
    "drop_none_properties", "fixed_mask", "held_mask", "constrain_held", "layer_indices", "bottom_fixed_mask",
    "add_fix_bottom", "oc20_tags",
]

log = logging.getLogger(__name__)

FACETS: tuple[str, ...] = ("fcc111", "fcc100", "fcc110", "fcc211")
_BUILDERS: dict[str, Callable[..., Atoms]] = {"fcc111": fcc111, "fcc100": fcc100, "fcc110": fcc110, "fcc211": fcc211}
#: Vacuum (Å) on each side of a data-generation slab.
SLAB_VACUUM = 6.5
#: two atoms whose heights differ by less than this (Å) belong to the same layer
LAYER_TOLERANCE = 0.3


# ------------------------------------------------------------------------------------ building
def facet_name(facet: str) -> str:
    """``"111"``, ``"(111)"`` or ``"fcc111"`` -> ``"fcc111"`` (one of :data:`FACETS`)."""
    f = str(facet).lower().strip().strip("()")
    f = f if f.startswith("fcc") else "fcc" + f
    if f not in _BUILDERS:
        raise ValueError(f"unknown facet {facet!r}; choose from 111, 100, 110, 211")
    return f


def _fcc_slab(metal: str, facet: str, size: tuple[int, int, int], a: float | None, vacuum: float) -> Atoms:
    """ASE's builder for ``facet`` at lattice constant ``a`` (default :func:`lattice_constant`),
    periodic along the surface only."""
    slab = _BUILDERS[facet_name(facet)](metal, size=size, a=lattice_constant(metal) if a is None else float(a),
                                         vacuum=vacuum)
    slab.pbc = (True, True, False)
    return slab


def build_surface(
    metal: str, facet: str = "111", size: Sequence[int] = (3, 3, 4), vacuum: float = 7.0, a: float | None = None
) -> Atoms:
    """An fcc ``metal`` slab (``facet`` 111 / 100 / 110 / 211, ``size`` = (nx, ny, layers)) at lattice
    constant ``a`` (default: :func:`~.catalogue.lattice_constant`, the EMT minimum or ASE's reference
    value), ``vacuum`` Å on each side, pbc (True, True, False), ``info`` naming metal, facet and size.
    For (211) nx is rounded up to a multiple of 3. Nothing is fixed (see :func:`add_fix_bottom`)."""
    name = facet_name(facet)
    size = tuple(int(n) for n in size)
    if len(size) != 3:
        raise ValueError(f"size is (nx, ny, layers), got {size}")
    if name == "fcc211" and size[0] % 3:
        size = (3 * -(-size[0] // 3), size[1], size[2])
    if any(n < 1 for n in size):
        raise ValueError(f"size is (nx, ny, layers), each at least 1, got {size}")
    slab = _fcc_slab(metal, name, size, a, vacuum)
    slab.info.update({"metal": metal, "facet": name, "size": "x".join(map(str, size))})
    return slab


def build_slab(metal: str, facet: str, cell: tuple[int, int, int], a: float | None = None) -> Atoms:
    """A data-generation slab: bulk-terminated, :data:`SLAB_VACUUM` Å of vacuum, the bottom half fixed
    (every atom more than 0.1 Å below the middle height), OC20 tags (0 = fixed sub-surface atoms,
    1 = free surface atoms; adsorbates get 2). ``a`` as in :func:`build_surface`."""
    slab = _fcc_slab(metal, facet, cell, a, SLAB_VACUUM)
    z = slab.positions[:, 2]
    fixed = bottom_fixed_mask(slab, fix_below=0.5 * (z.min() + z.max()) - 0.1)
    slab.set_constraint(FixAtoms(mask=fixed))
    slab.set_tags(np.where(fixed, 0, 1))
    return slab


def drop_none_properties(structure: Any) -> Any:
    """A copy of a pymatgen structure without the site properties that hold None values (e.g. the
    ``tags`` of atoms added by AdsorbateSiteFinder), which make ``AseAtomsAdaptor.get_atoms`` fail."""
    structure = structure.copy()
    for name, values in list(structure.site_properties.items()):
        if any(v is None for v in values):
            structure.remove_site_property(name)
    return structure


def slab_from_any(slab: Any) -> Atoms:
    """ASE Atoms or a pymatgen Structure / Slab -> an ASE slab in a standard frame: the first two
    cell vectors (the periodic ones) in the xy plane, the surface normal along +z (adsorbates go
    on the +z side), the third cell vector along z, pbc (True, True, False).

    The input's surface plane must be spanned by its first two cell vectors (pymatgen's Slab
    convention). A 3D-periodic input (pymatgen structures always are) is first made contiguous
    along the third vector (the largest gap becomes the vacuum). The third vector is then made
    orthogonal to the surface: it is not periodic any more, so this moves no atom, but minimum-
    image geometry along the surface (sites, placement, checks) needs it.
    """
    if isinstance(slab, Atoms):
        atoms = slab.copy()
    else:
        from pymatgen.core import Structure
        from pymatgen.io.ase import AseAtomsAdaptor

        if not isinstance(slab, Structure):
            raise TypeError(f"a slab must be ase.Atoms or a pymatgen Structure/Slab, got {type(slab).__name__}")
        atoms = AseAtomsAdaptor.get_atoms(drop_none_properties(slab))
        atoms.pbc = True
    if len(atoms) == 0:
        raise ValueError("the slab has no atoms")
    if not atoms.pbc[0] or not atoms.pbc[1]:
        raise ValueError(f"a slab must be periodic along its first two cell vectors (pbc={atoms.pbc.tolist()})")
    cell = atoms.cell.array.copy()
    normal = np.cross(cell[0], cell[1])
    if np.linalg.norm(normal) < 1e-8:
        raise ValueError("the first two cell vectors of a slab must span the surface plane")
    normal /= np.linalg.norm(normal)
    if abs(cell[2] @ normal) < 1e-6:  # no usable third vector (non-periodic input): make one
        extent = float(np.ptp(atoms.positions @ normal))
        cell[2] = normal * (extent + 20.0)
        atoms.set_cell(cell)
    atoms.set_cell(atoms.cell.standard_form()[0], scale_atoms=True)  # rotation: a || x, b in xy
    if atoms.pbc[2]:
        frac = atoms.get_scaled_positions(wrap=True)
        c = np.sort(frac[:, 2])
        gaps = np.diff(np.concatenate([c, [c[0] + 1.0]]))
        k = int(np.argmax(gaps))
        start = c[(k + 1) % len(c)]
        width = 1.0 - gaps[k]
        frac[:, 2] = (frac[:, 2] - start) % 1.0 + 0.5 * (1.0 - width)
        atoms.set_scaled_positions(frac)
        atoms.pbc = (True, True, False)
    cell = atoms.cell.array.copy()
    if cell[2, 2] < 0:  # a left-handed input: keep the vacuum on the same side
        cell[2] = -cell[2]
    height = max(float(cell[2, 2]), float(np.ptp(atoms.positions[:, 2])) + 10.0)
    if not np.allclose(cell[2], (0.0, 0.0, height)):
        cell[2] = (0.0, 0.0, height)
        atoms.set_cell(cell)  # positions unchanged
        atoms.wrap()  # back into the cell along the two periodic directions
    return atoms


# ---------------------------------------------------------------------------------- fixed atoms
def fixed_mask(atoms: Atoms) -> np.ndarray:
    """Atoms held by the structure's FixAtoms constraints."""
    mask = np.zeros(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            mask[constraint.index] = True
    return mask


def held_mask(atoms: Atoms) -> np.ndarray:
    """Atoms a dataset frame holds fixed: its per-atom ``fixed`` array where it has one (datagen writes
    it; extxyz keeps it), else its FixAtoms constraints (:func:`fixed_mask`)."""
    if "fixed" in atoms.arrays:
        return atoms.arrays["fixed"].astype(bool)
    return fixed_mask(atoms)


def constrain_held(atoms: Atoms) -> Atoms:
    """A calculator-free copy whose FixAtoms constraint follows the per-atom ``fixed`` array (if any;
    else the copy keeps the constraints it has): a dataset frame ready to relax."""
    out = atoms.copy()
    out.calc = None
    if "fixed" in out.arrays:
        out.set_constraint(FixAtoms(mask=held_mask(out)))
    return out


def layer_indices(z: np.ndarray, tolerance: float = LAYER_TOLERANCE) -> np.ndarray:
    """Layer number of every atom from its height, 0 = lowest layer: heights are sorted and a new
    layer starts wherever two consecutive heights differ by more than ``tolerance``."""
    z = np.asarray(z, dtype=float)
    if z.size == 0:
        return np.zeros(0, dtype=int)
    order = np.argsort(z, kind="stable")
    gaps = np.diff(z[order]) > tolerance
    layer_sorted = np.concatenate([[0], np.cumsum(gaps)])
    layers = np.empty(z.size, dtype=int)
    layers[order] = layer_sorted
    return layers


def bottom_fixed_mask(
    atoms: Atoms,
    fix_bottom: int | None = None,
    fix_below: float | None = None,
    tolerance: float = LAYER_TOLERANCE,
) -> np.ndarray:
    """Atoms to hold fixed: the ``fix_bottom`` lowest layers (see :func:`layer_indices`; heights
    are Cartesian z, the surface normal of ASE/pymatgen slabs) and/or every atom with
    ``z < fix_below`` (Å)."""
    mask = np.zeros(len(atoms), dtype=bool)
    z = atoms.positions[:, 2]
    if fix_bottom is not None:
        if isinstance(fix_bottom, bool) or int(fix_bottom) != fix_bottom or fix_bottom < 0:
            raise ValueError(f"fix_bottom is a number of layers (int >= 0), got {fix_bottom!r}")
        mask |= layer_indices(z, tolerance) < int(fix_bottom)
    if fix_below is not None:
        mask |= z < float(fix_below)
    return mask


def add_fix_bottom(
    atoms: Atoms, fix_bottom: int | None = None, fix_below: float | None = None, tolerance: float = LAYER_TOLERANCE
) -> int:
    """Add a FixAtoms constraint for :func:`bottom_fixed_mask` (existing constraints are kept);
    returns the number of atoms newly fixed."""
    if fix_bottom is None and fix_below is None:
        return 0
    mask = bottom_fixed_mask(atoms, fix_bottom, fix_below, tolerance) & ~fixed_mask(atoms)
    if mask.any():
        atoms.set_constraint(list(atoms.constraints) + [FixAtoms(mask=mask)])
    if mask.sum() == len(atoms):
        log.warning("every atom is fixed (fix_bottom=%s, fix_below=%s)", fix_bottom, fix_below)
    return int(mask.sum())


def oc20_tags(system: Atoms, n_slab: int, fix_bottom: int | None = 2) -> np.ndarray:
    """OC20's per-atom tags of a slab + adsorbate system whose first ``n_slab`` atoms are the slab:
    2 for the adsorbate, 0 for subsurface slab atoms (the ``fix_bottom`` lowest layers and any atom
    already held by FixAtoms: OC20 fixes exactly its subsurface atoms), 1 for the other slab atoms."""
    if not 0 < n_slab <= len(system):
        raise ValueError(f"n_slab must be between 1 and {len(system)}, got {n_slab}")
    slab = system[:n_slab]
    subsurface = bottom_fixed_mask(slab, fix_bottom) | fixed_mask(system)[:n_slab]
    tags = np.full(len(system), 2, dtype=int)
    tags[:n_slab] = np.where(subsurface, 0, 1)
    return tags
