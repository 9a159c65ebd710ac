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



def _co_on_fcc(layers: int = 3):
    """CO at an fcc site of a Cu(111) slab whose bottom layers are held (FixAtoms), its mask and sites."""
    from equiformer_calc.surfaces import add_fix_bottom

    slab = build_surface("Cu", "111", size=(2, 2, layers))
    add_fix_bottom(slab, layers - 1)
    sites = find_sites(slab, symmetry_reduce=False)
    site = next(s for s in sites if s.kind == "fcc")
    initial = place_adsorbate_on_site(slab, "CO", site)
    return slab, initial, np.arange(len(initial)) >= len(slab), site


def test_intercalation_is_a_bond_to_a_frozen_atom() -> None:
    """AdsorbML's fourth anomaly: an adsorbate atom bonded to an atom that may not relax (FixAtoms here;
    OC20 tag 0 on tagged structures). On the surface it is not; pushed into the slab next to a held atom it is."""
    from equiformer_calc.surfaces import frozen_atoms

    slab, initial, mask, site = _co_on_fcc()
    frozen = frozen_atoms(initial, mask)
    assert frozen.sum() == 2 * len(slab) // 3 and not frozen[mask].any()
    assert check_relaxation(initial.copy(), mask, initial, site.position)["intercalated"] is False
    sunk = initial.copy()
    held = np.flatnonzero(frozen)
    top_held = held[np.argmax(initial.positions[held, 2])]  # an atom of the highest held layer
    sunk.positions[mask] += initial.positions[top_held] + [0.0, 0.0, 1.0] - initial.positions[np.flatnonzero(mask)[0]]
    flags = check_relaxation(sunk, mask, initial, site.position)
    assert flags["intercalated"] and "intercalated" in flags["anomalies"]
    # the same structure OC20-tagged and without constraints: tag 0 is the frozen subsurface
    tagged = sunk.copy()
    tagged.set_constraint()
    tags = np.where(mask, 2, np.where(frozen, 0, 1))
    tagged.set_tags(tags)
    assert check_relaxation(tagged, mask)["intercalated"]
    tagged.set_tags(np.where(mask, 2, 0))  # all-zero slab tags say nothing about what was frozen
    assert not check_relaxation(tagged, mask)["intercalated"]


def test_surface_change_is_read_from_the_bond_graph_too() -> None:
    """AdsorbML's reconstruction test against the relaxed clean slab: the slab's own bonds are unchanged,
    a top atom torn out of the surface (all its bonds beyond the 1.5x cushion) is a change, and a 3 %
    breathing of the whole slab is not."""
    from equiformer_calc.surfaces import SURFACE_BOND_CUSHION, surface_bonds_changed

    slab, initial, mask, site = _co_on_fcc()
    ref = initial[np.flatnonzero(~mask)]
    assert not surface_bonds_changed(ref.copy(), ref)
    assert check_relaxation(initial.copy(), mask, relaxed_slab=ref)["surface_changed"] is False
    top = int(np.argmax(initial.positions[~mask, 2]))
    torn = initial.copy()
    torn.positions[top, 2] += 2.0 * SURFACE_BOND_CUSHION
    flags = check_relaxation(torn, mask, relaxed_slab=ref)
    assert flags["surface_changed"] and "surface_changed" in flags["anomalies"]
    breathing = initial.copy()
    breathing.set_cell(initial.cell * 1.03, scale_atoms=True)
    assert not surface_bonds_changed(breathing[np.flatnonzero(~mask)], ref)


def test_no_anomaly_after_a_real_emt_relaxation() -> None:
    """O at an fcc site of Cu(111) relaxed with ASE's EMT: none of the four AdsorbML flags is raised."""
    from ase.calculators.emt import EMT
    from ase.optimize import BFGS

    from equiformer_calc.surfaces import ANOMALIES

    slab = build_surface("Cu", "111", size=(2, 2, 3))
    from equiformer_calc.surfaces import add_fix_bottom

    add_fix_bottom(slab, 2)
    sites = find_sites(slab, symmetry_reduce=False)
    site = next(s for s in sites if s.kind == "fcc")
    initial = place_adsorbate_on_site(slab, "O", site)
    relaxed = initial.copy()
    relaxed.calc = EMT()
    BFGS(relaxed, logfile=None).run(fmax=0.05, steps=100)
    flags = check_relaxation(relaxed, np.arange(len(relaxed)) >= len(slab), initial, site.position)
    assert flags["anomalies"] == [] and not any(flags[k] for k in ANOMALIES)
