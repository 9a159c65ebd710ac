"""Adsorption sites of a slab, two ways.

* :func:`site_positions`: every instance of a *named* site kind on a slab built by ASE, by ASE's own
  site names (``ontop``, ``bridge``, ``fcc``, ``hcp``, ``hollow``, ``longbridge``, ``shortbridge``:
  exactly the points ``ase.build.add_adsorbate(slab, ..., position=NAME)`` uses) and, for the stepped
  (211) facet, step / terrace sites located geometrically. Data generation enumerates these
  (:data:`FACET_SITES`).
* :func:`find_sites`: the symmetry-distinct sites of *any* slab (pymatgen's ``AdsorbateSiteFinder``),
  each named by the number of surface atoms it touches: ``ontop`` (1), ``bridge`` (2), ``fcc`` /
  ``hcp`` (3-fold; hcp when an atom of the second layer lies right below) and ``hollow`` (4-fold).
  Screening enumerates these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.geometry import find_mic
from ase.neighborlist import neighbor_list

from .slabs import drop_none_properties

__all__ = ["FACET_SITES", "RANDOM_SITE", "SITE_KINDS", "Site", "site_positions", "find_sites", "site_kind"]

#: Named adsorption-site kinds per facet. (111)/(100)/(110) use ASE's site definitions; the
#: stepped (211) sites are located geometrically by :func:`site_positions`.
FACET_SITES: dict[str, tuple[str, ...]] = {
    "fcc111": ("ontop", "bridge", "fcc", "hcp"),
    "fcc100": ("ontop", "bridge", "hollow"),
    "fcc110": ("ontop", "longbridge", "shortbridge", "hollow"),
    "fcc211": ("ontop_step", "ontop_terrace", "bridge_step", "bridge_terrace", "hollow_terrace", "fourfold_step"),
}

#: Site label for adsorbates dropped at a uniformly random lateral position.
RANDOM_SITE = "random"

#: The kinds :func:`find_sites` names, in its order.
SITE_KINDS: tuple[str, ...] = ("ontop", "bridge", "fcc", "hcp", "hollow")


# ----------------------------------------------------------------------------- named sites (ASE)
def _coordination(atoms: Atoms) -> np.ndarray:
    nn = float(neighbor_list("d", atoms, 4.5).min())  # nearest-neighbour distance of the metal
    i = neighbor_list("i", atoms, 1.2 * nn)
    return np.bincount(i, minlength=len(atoms))


def _mic_vectors(atoms: Atoms, origin: np.ndarray, indices: Sequence[int]) -> np.ndarray:
    vectors, _ = find_mic(atoms.positions[list(indices)] - origin, atoms.cell, atoms.pbc)
    return vectors


def _nearest(atoms: Atoms, i: int, candidates: Sequence[int], k: int) -> list[int]:
    """The ``k`` atoms of ``candidates`` (excluding ``i``) nearest to atom ``i`` (MIC), stable order."""
    candidates = [c for c in candidates if c != i]
    d = np.linalg.norm(_mic_vectors(atoms, atoms.positions[i], candidates), axis=1)
    order = np.lexsort((np.array(candidates), np.round(d, 4)))
    return [candidates[j] for j in order[:k]]


def _centroid_xy(atoms: Atoms, indices: Sequence[int]) -> np.ndarray:
    """Lateral centroid of atoms taken as minimum images around the first one."""
    origin = atoms.positions[indices[0]]
    vectors = _mic_vectors(atoms, origin, indices)
    return (origin + vectors.mean(axis=0))[:2]


def site_positions(slab: Atoms, facet: str, site: str) -> list[np.ndarray]:
    """Lateral (x, y) positions of every instance of a named site kind on a clean slab.

    (111)/(100)/(110) sites follow ASE's ``adsorbate_info`` definitions (the slab must come from
    ASE's builder), replicated over the top-layer atoms. (211) sites are built from surface atoms
    (upper half, coordination < 12) ranked by height into step-edge, terrace and corner rows.
    """
    z = slab.positions[:, 2]
    if facet != "fcc211":
        info = slab.info["adsorbate_info"]
        offset = np.asarray(info["sites"][site], dtype=float) @ np.asarray(info["cell"], dtype=float)
        top = np.flatnonzero(z > z.max() - 0.1)
        return [slab.positions[i, :2] + offset for i in sorted(top)]

    cn = _coordination(slab)
    surface = np.flatnonzero((cn < 12) & (z > 0.5 * (z.min() + z.max())))
    heights = np.unique(np.round(z[surface], 2))[::-1]
    rows = [sorted(int(i) for i in surface if abs(z[i] - h) < 0.05) for h in heights[:3]]
    step, terrace, corner = rows
    sites: list[np.ndarray] = []
    if site == "ontop_step":
        sites = [slab.positions[i, :2] for i in step]
    elif site == "ontop_terrace":
        sites = [slab.positions[i, :2] for i in terrace]
    elif site == "bridge_step":
        sites = [_centroid_xy(slab, [i, *_nearest(slab, i, step, 1)]) for i in step]
    elif site == "bridge_terrace":
        sites = [_centroid_xy(slab, [i, *_nearest(slab, i, terrace, 1)]) for i in step]
    elif site == "hollow_terrace":
        sites = [_centroid_xy(slab, [i, *_nearest(slab, i, terrace, 2)]) for i in step]
    elif site == "fourfold_step":
        for i in step:
            j = _nearest(slab, i, step, 1)[0]
            ci = _nearest(slab, i, corner, 1)[0]
            cj = _nearest(slab, j, corner, 1)[0]
            sites.append(_centroid_xy(slab, [i, j, ci, cj]))
    else:
        raise ValueError(f"unknown (211) site {site!r}")
    return sites


# ------------------------------------------------------------------- symmetry-distinct (pymatgen)
@dataclass
class Site:
    """An adsorption site: ``label`` (unique per surface, e.g. ``fcc_0``), ``kind`` (ontop,
    bridge, fcc, hcp, hollow), ``position`` (the site point, in the plane of the surface atoms
    it touches) and ``asf_kind`` (pymatgen's own name)."""

    label: str
    kind: str
    position: np.ndarray
    asf_kind: str


def _image_vectors(slab: Atoms, point: np.ndarray, reach: int = 2) -> np.ndarray:
    """Vectors from ``point`` to every atom and its periodic images within ``reach`` cells along
    the two surface vectors (small cells hold several images of one atom around a site)."""
    shifts = np.array([(i, j, 0) for i in range(-reach, reach + 1) for j in range(-reach, reach + 1)], dtype=float)
    base = find_mic(slab.positions - point, slab.cell, slab.pbc)[0]
    return (base[None, :, :] + (shifts @ slab.cell.array)[:, None, :]).reshape(-1, 3)


def site_kind(slab: Atoms, point: np.ndarray) -> str:
    """The kind of the site at ``point`` (in the plane of the surface atoms it touches): the number of
    equally near atoms (within 0.1 Å) names it, and a 3-fold site is ``hcp`` when a second-layer atom
    lies right below (0.5-3 Å down, within 0.5 Å laterally), else ``fcc``."""
    v = _image_vectors(slab, point)
    d = np.linalg.norm(v, axis=1)
    touching = int((d < d.min() + 0.1).sum())
    if touching <= 1:
        return "ontop"
    if touching == 2:
        return "bridge"
    if touching == 3:
        below = (np.hypot(v[:, 0], v[:, 1]) < 0.5) & (v[:, 2] < -0.5) & (v[:, 2] > -3.0)
        return "hcp" if below.any() else "fcc"
    return "hollow"


def _asf_points(slab: Atoms, symm_reduce: float) -> list[tuple[str, np.ndarray]]:
    from pymatgen.analysis.adsorption import AdsorbateSiteFinder
    from pymatgen.io.ase import AseAtomsAdaptor

    clean = slab.copy()
    clean.set_constraint()
    structure = drop_none_properties(AseAtomsAdaptor.get_structure(clean))
    finder = AdsorbateSiteFinder(structure)
    found = finder.find_adsorption_sites(distance=0.0, symm_reduce=symm_reduce, near_reduce=0.01)
    return [(kind, np.asarray(p, dtype=float)) for kind in ("ontop", "bridge", "hollow") for p in found.get(kind, [])]


def find_sites(slab: Atoms, symmetry_reduce: bool = True) -> list[Site]:
    """The symmetry-distinct adsorption sites of ``slab`` (all of them with
    ``symmetry_reduce=False``), labelled ``<kind>_<k>`` in a deterministic order."""
    points = _asf_points(slab, 0.01 if symmetry_reduce else 0.0)
    sites = [(site_kind(slab, p), p, asf) for asf, p in points]
    order = {kind: k for k, kind in enumerate(SITE_KINDS)}
    sites.sort(key=lambda s: (order[s[0]], round(float(s[1][2]), 2), round(float(s[1][0]), 2), round(float(s[1][1]), 2)))
    counts: dict[str, int] = {}
    out = []
    for kind, p, asf in sites:
        k = counts.get(kind, 0)
        counts[kind] = k + 1
        out.append(Site(f"{kind}_{k}", kind, p, asf))
    return out
