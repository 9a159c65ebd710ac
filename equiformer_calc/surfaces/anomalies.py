"""The one checker of relaxed adsorbate + slab structures, after AdsorbML's four anomalies (desorbed,
dissociated, surface reconstructed, adsorbate intercalated) plus our site-changed flag.

Thresholds (one set, used by screening, the relaxation benchmark and data generation alike), in units of
the sum of two atoms' covalent radii (ASE's ``natural_cutoffs``), distances by minimum image:

* :data:`DISSOCIATION_FACTOR` = 1.25: two adsorbate atoms are bonded below 1.25 x (r_i + r_j); the
  adsorbate is *dissociated* when its bond graph has more connected pieces than at the start (one piece
  when no initial structure is given).
* :data:`DESORPTION_FACTOR` = 1.5: the adsorbate touches the surface when any adsorbate atom is within
  1.5 x (r_i + r_j) of any slab atom (looser than a bond: hollow-site bonds are long); *desorbed* when
  none is.
* *surface changed* (reconstructed): a slab atom moved more than :data:`SURFACE_CHANGE` = 1.0 A, or the
  slab's bond graph changed beyond a cushion (AdsorbML's test): a slab-slab bond at 1.0 x (r_i + r_j) in
  one of (reference slab, relaxed system's slab) that is not even within :data:`SURFACE_BOND_CUSHION` =
  1.5 x (r_i + r_j) in the other. The reference slab is the relaxed clean slab when given, else the
  initial structure's slab atoms.
* *intercalated*: an adsorbate atom bonded (1.0 x (r_i + r_j)) to a frozen slab atom, one that may not
  relax (the subsurface): the FixAtoms-held atoms of the structure, else OC20 tag 0 when the
  structure is OC20-tagged, or an explicit ``frozen`` mask.
* *site changed*: the binding atom's lateral shift exceeds ``move_tolerance`` (default 0.5 A), and the
  nearest of the offered sites names where it went.

Connectivity comes from ASE's neighbour list (``get_connectivity_matrix``) and
``scipy.sparse.csgraph.connected_components``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms
from ase.constraints import FixAtoms
from ase.geometry import find_mic
from ase.neighborlist import NeighborList, natural_cutoffs
from scipy.sparse.csgraph import connected_components

__all__ = [
    "ANOMALIES", "DESORPTION_FACTOR", "DISSOCIATION_FACTOR", "SURFACE_BOND_CUSHION", "SURFACE_CHANGE",
    "MOVE_TOLERANCE", "adsorbate_fragments", "check_relaxation", "frozen_atoms", "is_desorbed", "is_intercalated",
    "surface_bonds_changed",
]

DISSOCIATION_FACTOR = 1.25
DESORPTION_FACTOR = 1.5
SURFACE_CHANGE = 1.0
SURFACE_BOND_CUSHION = 1.5
MOVE_TOLERANCE = 0.5
#: the flags that make a relaxation anomalous (never a best site), in the order reports list them
ANOMALIES: tuple[str, ...] = ("desorbed", "dissociated", "surface_changed", "intercalated")


def _connectivity(atoms: Atoms, factor: float) -> Any:
    """Sparse (N, N) matrix of pairs closer than ``factor`` x (sum of covalent radii), minimum image."""
    nl = NeighborList(natural_cutoffs(atoms, mult=factor), self_interaction=False, bothways=True, skin=0.0)
    nl.update(atoms)
    return nl.get_connectivity_matrix(sparse=True).tocsr()


def adsorbate_fragments(atoms: Atoms, adsorbate: np.ndarray) -> int:
    """Number of bonded pieces of the adsorbate atoms (boolean mask ``adsorbate``)."""
    idx = np.flatnonzero(adsorbate)
    if len(idx) <= 1:
        return len(idx)
    sub = _connectivity(atoms, DISSOCIATION_FACTOR)[idx][:, idx]
    return int(connected_components(sub, directed=False)[0])


def is_desorbed(atoms: Atoms, adsorbate: np.ndarray) -> bool:
    """Whether no adsorbate atom is within :data:`DESORPTION_FACTOR` x covalent radii of a slab atom."""
    ads, slab = np.flatnonzero(adsorbate), np.flatnonzero(~adsorbate)
    if len(ads) == 0 or len(slab) == 0:
        return False
    return _connectivity(atoms, DESORPTION_FACTOR)[ads][:, slab].nnz == 0


def surface_bonds_changed(slab_final: Atoms, slab_reference: Atoms) -> bool:
    """Whether the bond graph of the slab atoms changed between ``slab_reference`` and ``slab_final``
    (same atoms, same order) beyond the :data:`SURFACE_BOND_CUSHION`: a bond of one that is not even a
    cushioned bond of the other, either way."""
    if len(slab_final) != len(slab_reference):
        raise ValueError(f"the reference slab has {len(slab_reference)} atoms, the relaxed slab {len(slab_final)}")
    for a, b in ((slab_final, slab_reference), (slab_reference, slab_final)):
        tight = _connectivity(a, 1.0)
        loose = _connectivity(b, SURFACE_BOND_CUSHION)
        if (tight - tight.multiply(loose)).nnz:  # a bond of ``a`` absent from ``b``'s cushioned graph
            return True
    return False


def frozen_atoms(atoms: Atoms, adsorbate: np.ndarray) -> np.ndarray:
    """The slab atoms that may not relax: held by FixAtoms, else (OC20-tagged structures: tag 2 on the
    adsorbate) tag 0; none otherwise."""
    held = np.zeros(len(atoms), dtype=bool)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            held[c.get_indices()] = True
    if held.any():
        return held & ~adsorbate
    tags = atoms.get_tags()
    if (tags[adsorbate] == 2).all() and (tags[~adsorbate] == 0).any() and (tags[~adsorbate] == 1).any():
        return (tags == 0) & ~adsorbate
    return held


def is_intercalated(atoms: Atoms, adsorbate: np.ndarray, frozen: np.ndarray) -> bool:
    """Whether an adsorbate atom is bonded (1.0 x covalent radii) to a ``frozen`` (subsurface) atom."""
    ads, held = np.flatnonzero(adsorbate), np.flatnonzero(np.asarray(frozen, dtype=bool) & ~adsorbate)
    if len(ads) == 0 or len(held) == 0:
        return False
    return _connectivity(atoms, 1.0)[ads][:, held].nnz > 0


def _mic(vectors: np.ndarray, atoms: Atoms) -> np.ndarray:
    return find_mic(np.atleast_2d(vectors), atoms.cell, atoms.pbc)[0]


def check_relaxation(
    final: Atoms,
    adsorbate: np.ndarray | None = None,
    initial: Atoms | None = None,
    site_position: np.ndarray | None = None,
    sites: Sequence[tuple[str, np.ndarray]] = (),
    move_tolerance: float = MOVE_TOLERANCE,
    relaxed_slab: Atoms | None = None,
    frozen: np.ndarray | None = None,
) -> dict[str, Any]:
    """Flags of a relaxed adsorbate + slab structure.

    Args:
        final: the relaxed structure.
        adsorbate: boolean mask of adsorbate atoms (default: OC20 tag 2).
        initial: the starting structure (same atom order), for "more pieces than at the start" and the
            surface check; without it dissociation means more than one piece and the surface is not checked.
        site_position: where the binding atom (the first adsorbate atom) started (default: its initial position).
        sites: ``(kind, position)`` of the slab's sites, to name the final site.
        move_tolerance: lateral shift (A) beyond which the site changed.
        relaxed_slab: the relaxed clean slab (the slab atoms only, same order): the bond-graph reference
            of the surface check (default: the initial structure's slab atoms).
        frozen: mask of the atoms that may not relax, for the intercalation check (default:
            :func:`frozen_atoms` of ``final``, else of ``initial``).

    Returns:
        ``desorbed``, ``dissociated``, ``surface_changed`` (None without ``initial`` or ``relaxed_slab``),
        ``intercalated``, ``moved`` (None without a start position), ``lateral_shift`` (A), ``final_site``
        (kind or None), and ``anomalies``: the raised flags among :data:`ANOMALIES`, in that order.
    """
    mask = final.get_tags() == 2 if adsorbate is None else np.asarray(adsorbate, dtype=bool)
    before = adsorbate_fragments(initial, mask) if initial is not None else min(1, int(mask.sum()))
    flags: dict[str, Any] = {
        "desorbed": is_desorbed(final, mask),
        "dissociated": adsorbate_fragments(final, mask) > before,
        "surface_changed": None,
        "intercalated": False,
        "moved": None,
        "lateral_shift": None,
        "final_site": None,
    }
    slab_final = final[np.flatnonzero(~mask)]
    if initial is not None and (~mask).any():
        slab_moves = np.linalg.norm(_mic(final.positions[~mask] - initial.positions[~mask], final), axis=1)
        reference = relaxed_slab if relaxed_slab is not None else initial[np.flatnonzero(~mask)]
        flags["surface_changed"] = bool(slab_moves.max() > SURFACE_CHANGE) or surface_bonds_changed(slab_final, reference)
    elif relaxed_slab is not None and (~mask).any():
        flags["surface_changed"] = surface_bonds_changed(slab_final, relaxed_slab)
    if frozen is None:
        frozen = frozen_atoms(final, mask)
        if not frozen.any() and initial is not None:
            frozen = frozen_atoms(initial, mask)
    flags["intercalated"] = is_intercalated(final, mask, frozen)
    if mask.any():
        binding = int(np.flatnonzero(mask)[0])
        start = site_position if site_position is not None else (initial.positions[binding] if initial is not None else None)
        if start is not None:
            shift = _mic(final.positions[binding] - np.asarray(start), final)[0]
            flags["lateral_shift"] = float(np.hypot(shift[0], shift[1]))
            flags["moved"] = flags["lateral_shift"] > move_tolerance
        if sites:
            d = [np.hypot(*_mic(final.positions[binding] - np.asarray(p), final)[0][:2]) for _, p in sites]
            flags["final_site"] = sites[int(np.argmin(d))][0]
    flags["anomalies"] = [k for k in ANOMALIES if flags[k]]
    return flags
