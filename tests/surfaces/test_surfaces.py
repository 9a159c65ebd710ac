"""The one checker of relaxed adsorbate + slab structures (``equiformer_calc.surfaces``)."""

from __future__ import annotations

import numpy as np
from ase.build import add_adsorbate, fcc111

from equiformer_calc.surfaces import DESORPTION_FACTOR, DISSOCIATION_FACTOR, adsorbate_fragments, check_relaxation
from equiformer_calc.surfaces import build_surface, find_sites, place_adsorbate_on_site


def test_flags_without_an_initial_structure() -> None:
    slab = fcc111("Cu", (2, 2, 3), vacuum=8.0)
    slab.set_tags(np.zeros(len(slab), dtype=int))
    bound = slab.copy()
    add_adsorbate(bound, "C", 1.6, "fcc")
    add_adsorbate(bound, "O", 2.75, "fcc")
    bound.set_tags([0] * len(slab) + [2, 2])
    assert check_relaxation(bound)["anomalies"] == []
    desorbed = bound.copy()
    desorbed.positions[-2:, 2] += 4.0
    assert check_relaxation(desorbed)["anomalies"] == ["desorbed"]
    split = bound.copy()
    split.positions[-1, 0] += 3.0
    assert check_relaxation(split)["anomalies"] == ["dissociated"]


def test_flags_against_the_initial_site() -> None:
    slab = build_surface("Cu", "111", size=(2, 2, 3))
    sites = find_sites(slab, symmetry_reduce=False)
    site = next(s for s in sites if s.kind == "fcc")
    initial = place_adsorbate_on_site(slab, "CO", site)
    n = len(slab)
    mask = np.arange(len(initial)) >= n
    offered = [(s.kind, s.position) for s in sites]
    same = check_relaxation(initial.copy(), mask, initial, site.position, offered)
    assert not any(same[k] for k in ("desorbed", "dissociated", "moved", "surface_changed"))
    assert same["final_site"] == "fcc" and same["anomalies"] == []
    up = initial.copy()
    up.positions[n:, 2] += 4.0
    assert check_relaxation(up, mask, initial, site.position, offered)["desorbed"]
    split = initial.copy()
    split.positions[-1] += [0.0, 0.0, 2.0]
    assert check_relaxation(split, mask, initial, site.position, offered)["dissociated"]
    hcp = next(s for s in sites if s.kind == "hcp")
    moved = initial.copy()
    moved.positions[n:, :2] += hcp.position[:2] - site.position[:2]
    flags = check_relaxation(moved, mask, initial, site.position, offered)
    assert flags["moved"] and flags["final_site"] == "hcp"
    rebuilt = initial.copy()
    rebuilt.positions[0, 2] += 1.5  # a slab atom pulled out of the surface
    assert check_relaxation(rebuilt, mask, initial, site.position, offered)["surface_changed"]


def test_thresholds_are_the_documented_ones() -> None:
    """Two O atoms at just below / above 1.25 x (2 r_O) are one / two fragments; contact at 1.5x."""
    from ase import Atoms
    from ase.data import covalent_radii

    r = covalent_radii[8]
    for factor, pieces in ((0.99 * DISSOCIATION_FACTOR, 1), (1.01 * DISSOCIATION_FACTOR, 2)):
        pair = Atoms("O2", positions=[[0, 0, 0], [factor * 2 * r, 0, 0]])
        assert adsorbate_fragments(pair, np.array([True, True])) == pieces
    rcu = covalent_radii[29]
    for factor, desorbed in ((0.99 * DESORPTION_FACTOR, False), (1.01 * DESORPTION_FACTOR, True)):
        contact = Atoms("CuO", positions=[[0, 0, 0], [0, 0, factor * (r + rcu)]], tags=[0, 2])
        assert check_relaxation(contact)["desorbed"] is desorbed

