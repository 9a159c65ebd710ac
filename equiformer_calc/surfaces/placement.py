"""Putting an adsorbate on a slab: binding atom down, at a species-dependent distance from the
nearest metal atom, the other atoms kept clear of the surface.

The rule (one for data generation and screening): the binding atom (the template's first atom)
goes above the lateral point ``xy`` at the lowest height where it is at least
:func:`binding_distance` from every metal atom (minimum image) and every other adsorbate atom at
least :data:`OTHER_ATOM_CLEARANCE`; so the binding atom's nearest metal atom is exactly the binding
distance away unless the rest of the molecule holds it higher. With no metal atom within reach below,
it sits that distance above the top layer. The adsorbate atoms get tag 2 (OC20).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.constraints import FixAtoms
from ase.geometry import find_mic

from .catalogue import adsorbate_template, build_adsorbate
from .sites import Site
from .slabs import fixed_mask

__all__ = [
    "BINDING_DISTANCE", "DEFAULT_BINDING_DISTANCE", "OTHER_ATOM_CLEARANCE", "binding_distance", "placement_height",
    "attach", "place_adsorbate", "place_adsorbate_on_site",
]

#: Target distance (Å) from the binding atom to its nearest metal atom on placement.
BINDING_DISTANCE: dict[str, float] = {"H": 1.75, "C": 1.9, "N": 1.9, "O": 1.95}
#: The binding distance (Å) of an element :data:`BINDING_DISTANCE` lacks.
DEFAULT_BINDING_DISTANCE = 2.0
#: Minimum distance (Å) from non-binding adsorbate atoms to any metal atom on placement.
OTHER_ATOM_CLEARANCE = 1.8


def binding_distance(symbol: str) -> float:
    """The placement distance (Å) of a binding atom of element ``symbol`` from its nearest metal atom."""
    return BINDING_DISTANCE.get(symbol, DEFAULT_BINDING_DISTANCE)


def placement_height(slab: Atoms, ads: Atoms, xy: np.ndarray, binding: float) -> float:
    """Lowest z for the binding atom (``ads[0]``) at lateral ``xy`` keeping all adsorbate atoms clear
    of the slab: ``binding`` Å for the binding atom, :data:`OTHER_ATOM_CLEARANCE` for the others
    (``ads`` positions relative to the binding atom)."""
    z_top = float(slab.positions[:, 2].max())
    required: list[float] = []
    for k, atom_pos in enumerate(ads.positions):
        need = binding if k == 0 else OTHER_ATOM_CLEARANCE
        probe = np.array([xy[0] + atom_pos[0], xy[1] + atom_pos[1], 0.0])
        vectors, _ = find_mic(slab.positions - probe, slab.cell, slab.pbc)
        lateral = np.hypot(vectors[:, 0], vectors[:, 1])
        close = lateral < need
        if np.any(close):
            # height at which this atom is exactly `need` away from its closest metal atom
            z_atom = np.max(slab.positions[close, 2] + np.sqrt(need**2 - lateral[close] ** 2))
            required.append(float(z_atom) - atom_pos[2])
        elif k == 0:
            required.append(z_top + binding)  # nothing below within reach: sit above the top layer
    return max(required) if required else z_top + binding


def attach(slab: Atoms, template: Atoms, xy: np.ndarray, binding: float) -> Atoms:
    """``slab`` + a copy of ``template`` (binding atom first, positions relative to it) with its
    binding atom above ``xy`` at :func:`placement_height`. The slab's constraints are kept; the
    adsorbate atoms get tag 2."""
    ads = template.copy()
    ads.translate((xy[0], xy[1], placement_height(slab, ads, xy, binding)))
    return _join(slab, ads)


def _join(slab: Atoms, ads: Atoms) -> Atoms:
    """A copy of ``slab`` (constraints kept) extended by ``ads`` (placed), the adsorbate tagged 2."""
    system = slab.copy()
    tags = np.concatenate([slab.get_tags(), np.full(len(ads), 2)])
    system.extend(ads)
    system.set_tags(tags)
    return system


def place_adsorbate(
    slab: Atoms,
    adsorbate: str,
    xy: np.ndarray,
    rng: np.random.Generator,
    max_tilt_deg: float = 15.0,
    height_jitter: tuple[float, float] = (-0.05, 0.25),
) -> Atoms:
    """Put ``adsorbate`` (a name of :data:`~.catalogue.ADSORBATES`) above lateral position ``xy`` of
    ``slab`` with random orientation, as data generation does.

    The molecule gets a uniformly random rotation about the surface normal and a small random
    tilt (up to ``max_tilt_deg``); its binding distance gets a random jitter drawn from
    ``height_jitter``. Returns a new Atoms with tags 2 for the adsorbate atoms and one FixAtoms
    constraint: the slab's fixed atoms.
    """
    ads = build_adsorbate(adsorbate)
    if len(ads) > 1:
        tilt = rng.uniform(0.0, max_tilt_deg)
        tilt_axis = rng.uniform(0.0, 360.0)
        ads.rotate(tilt, (np.cos(np.radians(tilt_axis)), np.sin(np.radians(tilt_axis)), 0.0), center=(0, 0, 0))
        ads.rotate(rng.uniform(0.0, 360.0), "z", center=(0, 0, 0))
    binding = binding_distance(ads[0].symbol) + rng.uniform(*height_jitter)
    system = attach(slab, ads, xy, binding)
    fixed = np.zeros(len(system), dtype=bool)
    fixed[: len(slab)] = fixed_mask(slab)
    system.set_constraint(FixAtoms(mask=fixed))
    return system


def place_adsorbate_on_site(
    slab: Atoms, adsorbate: str | Atoms, site: Site | np.ndarray, height: float | None = None
) -> Atoms:
    """``slab`` + the adsorbate (a name or an ``ase.Atoms`` template, see
    :func:`~.catalogue.adsorbate_template`) upright with its binding atom (first atom) above ``site``
    (a :class:`~.sites.Site` or a point; only its x, y count) at :func:`binding_distance` from the
    nearest metal atom, the other atoms kept clear of the surface; or, with ``height``, simply that
    many Å above the topmost slab atom (ASE's ``add_adsorbate`` convention). Slab constraints are
    kept; the adsorbate atoms get tag 2."""
    _, template = adsorbate_template(adsorbate)
    point = site.position if isinstance(site, Site) else np.asarray(site, dtype=float)
    if height is None:
        return attach(slab, template, point[:2], binding_distance(template[0].symbol))
    template.translate((point[0], point[1], float(slab.positions[:, 2].max()) + float(height)))
    return _join(slab, template)
