"""The one checker of relaxed adsorbate + slab structures (desorbed, dissociated, surface changed, site changed).

Thresholds (one set, used by screening, the relaxation benchmark and data generation alike), in units of
the sum of two atoms' covalent radii (ASE's ``natural_cutoffs``), distances by minimum image:

* :data:`DISSOCIATION_FACTOR` = 1.25: two adsorbate atoms are bonded below 1.25 x (r_i + r_j); the
  adsorbate is *dissociated* when its bond graph has more connected pieces than at the start (one piece
  when no initial structure is given).
* :data:`DESORPTION_FACTOR` = 1.5: the adsorbate touches the surface when any adsorbate atom is within
  1.5 x (r_i + r_j) of any slab atom (looser than a bond: hollow-site bonds are long); *desorbed* when
  none is.
* :data:`SURFACE_CHANGE` = 1.0 A: the surface *reconstructed* when a slab atom moved more than this.
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
from ase.geometry import find_mic
from ase.neighborlist import NeighborList, natural_cutoffs
from scipy.sparse.csgraph import connected_components

__all__ = [
    "DESORPTION_FACTOR", "DISSOCIATION_FACTOR", "SURFACE_CHANGE", "MOVE_TOLERANCE", "adsorbate_fragments",
    "check_relaxation", "is_desorbed",
]

DISSOCIATION_FACTOR = 1.25
DESORPTION_FACTOR = 1.5
SURFACE_CHANGE = 1.0
MOVE_TOLERANCE = 0.5


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


def _mic(vectors: np.ndarray, atoms: Atoms) -> np.ndarray:
    return find_mic(np.atleast_2d(vectors), atoms.cell, atoms.pbc)[0]


def check_relaxation(
    final: Atoms,
    adsorbate: np.ndarray | None = None,
    initial: Atoms | None = None,
    site_position: np.ndarray | None = None,
    sites: Sequence[tuple[str, np.ndarray]] = (),
    move_tolerance: float = MOVE_TOLERANCE,
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

    Returns:
        ``desorbed``, ``dissociated``, ``surface_changed`` (None without ``initial``), ``moved`` (None
        without a start position), ``lateral_shift`` (A), ``final_site`` (kind or None), and ``anomalies``:
        the sorted names of the raised flags among desorbed / dissociated / surface_changed.
    """
    mask = final.get_tags() == 2 if adsorbate is None else np.asarray(adsorbate, dtype=bool)
    before = adsorbate_fragments(initial, mask) if initial is not None else min(1, int(mask.sum()))
    flags: dict[str, Any] = {
        "desorbed": is_desorbed(final, mask),
        "dissociated": adsorbate_fragments(final, mask) > before,
        "surface_changed": None,
        "moved": None,
        "lateral_shift": None,
        "final_site": None,
    }
    if initial is not None and (~mask).any():
        slab_moves = np.linalg.norm(_mic(final.positions[~mask] - initial.positions[~mask], final), axis=1)
        flags["surface_changed"] = bool(slab_moves.max() > SURFACE_CHANGE)
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
    flags["anomalies"] = sorted(k for k in ("desorbed", "dissociated", "surface_changed") if flags[k])
    return flags
