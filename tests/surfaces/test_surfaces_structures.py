"""Slabs, sites and placement of ``equiformer_calc.surfaces`` against ASE's own definitions and the
documented geometry (the anomaly checker is tested in ``test_surfaces.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import add_adsorbate, fcc100, fcc110, fcc111
from ase.constraints import FixAtoms
from ase.data import atomic_numbers, reference_states
from ase.geometry import find_mic, get_distances

from equiformer_calc.surfaces import (
    EMT_LATTICE_CONSTANTS,
    FACET_SITES,
    FACETS,
    OTHER_ATOM_CLEARANCE,
    RANDOM_SITE,
    add_fix_bottom,
    adsorbate_template,
    binding_distance,
    build_slab,
    build_surface,
    constrain_held,
    find_sites,
    fixed_mask,
    gas_reference_energy,
    held_mask,
    lattice_constant,
    layer_indices,
    oc20_tags,
    place_adsorbate,
    place_adsorbate_on_site,
    reference_potentials,
    site_positions,
)

ASE_BUILDERS = {"fcc111": fcc111, "fcc100": fcc100, "fcc110": fcc110}


def _metal_distances(system: Atoms, n_slab: int) -> np.ndarray:
    """(n_adsorbate, n_slab) minimum-image distances from each adsorbate atom to each slab atom."""
    _, d = get_distances(system.positions[n_slab:], system.positions[:n_slab], cell=system.cell, pbc=system.pbc)
    return d


def _xy_offset(a: np.ndarray, b: np.ndarray, atoms: Atoms) -> float:
    """Lateral minimum-image distance of two points of a slab."""
    v = find_mic(np.array([[a[0] - b[0], a[1] - b[1], 0.0]]), atoms.cell, atoms.pbc)[0][0]
    return float(np.hypot(v[0], v[1]))


# ------------------------------------------------------------------------------------ catalogue
def test_lattice_constants():
    assert lattice_constant("Cu") == EMT_LATTICE_CONSTANTS["Cu"]
    assert lattice_constant("Rh") == reference_states[atomic_numbers["Rh"]]["a"]  # not in EMT's table
    with pytest.raises(ValueError, match="Fe is not an fcc metal"):
        lattice_constant("Fe")
    with pytest.raises(ValueError, match="unknown metal 'Xx'"):
        lattice_constant("Xx")


def test_adsorbate_templates_bind_with_their_first_atom():
    name, co = adsorbate_template("CO")
    assert name == "CO" and co.get_chemical_symbols() == ["C", "O"]
    assert np.allclose(co.positions[0], 0.0) and co.positions[1, 2] > 0  # carbon down, oxygen up
    own = Atoms("NO", positions=[[1.0, 2.0, 3.0], [1.0, 2.0, 4.2]], cell=np.eye(3) * 5, pbc=True)
    own.info["name"] = "nitrosyl"
    name, template = adsorbate_template(own)
    assert name == "nitrosyl" and np.allclose(template.positions[0], 0.0) and not template.pbc.any()
    with pytest.raises(ValueError, match="unknown adsorbate 'XYZ'"):
        adsorbate_template("XYZ")


def test_gas_references_follow_oc20():
    e = {"H2": -6.8, "H2O": -14.2, "CO": -14.8, "N2": -16.6}
    mu = reference_potentials(e)
    # the references reproduce their own molecules: E(H2O) = 2 mu_H + mu_O, E(CO) = mu_C + mu_O, E(N2) = 2 mu_N
    assert gas_reference_energy(["H", "H"], mu) == pytest.approx(e["H2"])
    assert gas_reference_energy(["O", "H", "H"], mu) == pytest.approx(e["H2O"])
    assert gas_reference_energy(["C", "O"], mu) == pytest.approx(e["CO"])
    assert gas_reference_energy(["N", "N"], mu) == pytest.approx(e["N2"])


# ---------------------------------------------------------------------------------------- slabs
@pytest.mark.parametrize("facet", ["fcc111", "fcc100", "fcc110"])
@pytest.mark.parametrize("cell", [(2, 2, 4), (3, 3, 3), (3, 2, 4)])
def test_data_slab_fixes_its_bottom_half(facet, cell):
    nx, ny, layers = cell
    slab = build_slab("Pt", facet, cell)
    fixed = fixed_mask(slab)
    per_layer = np.bincount(layer_indices(slab.positions[:, 2]))
    assert per_layer.tolist() == [nx * ny] * layers
    assert fixed.sum() == (layers // 2) * nx * ny  # the layers more than 0.1 A below the middle
    assert slab.positions[fixed, 2].max() < slab.positions[~fixed, 2].min()
    assert np.array_equal(slab.get_tags() == 0, fixed) and set(slab.get_tags()) <= {0, 1}
    assert slab.pbc.tolist() == [True, True, False]
    # the same lattice as ASE's builder at the EMT lattice constant
    ref = ASE_BUILDERS[facet]("Pt", size=cell, a=EMT_LATTICE_CONSTANTS["Pt"], vacuum=6.5)
    assert np.allclose(slab.positions, ref.positions) and np.allclose(slab.cell, ref.cell)


def test_stepped_slab_and_surface_builder():
    slab = build_slab("Cu", "fcc211", (3, 3, 4))
    fixed = fixed_mask(slab)
    assert 0 < fixed.sum() < len(slab) and slab.positions[fixed, 2].max() < slab.positions[~fixed, 2].min()
    surface = build_surface("Cu", "211", size=(2, 2, 3))
    assert surface.info["size"] == "3x2x3"  # (211) needs nx a multiple of 3
    assert surface.info["facet"] == "fcc211" and not surface.constraints
    with pytest.raises(ValueError, match="unknown facet"):
        build_surface("Cu", "123")


def test_fix_bottom_layers_and_oc20_tags():
    slab = build_surface("Cu", "111", size=(3, 3, 4))
    assert add_fix_bottom(slab, fix_bottom=2) == 18
    assert add_fix_bottom(slab, fix_bottom=2) == 0  # already held
    system = place_adsorbate_on_site(slab, "OH", site_positions(slab, "fcc111", "fcc")[0])
    tags = oc20_tags(system, len(slab), fix_bottom=2)
    assert (tags == 0).sum() == 18 and (tags == 1).sum() == 18 and tags[-2:].tolist() == [2, 2]
    assert np.array_equal(tags[: len(slab)] == 0, fixed_mask(system)[: len(slab)])


def test_held_atoms_of_a_dataset_frame():
    frame = build_slab("Cu", "fcc100", (2, 2, 4))
    frame.new_array("fixed", np.arange(len(frame)) < 3)  # a frame's own record wins over its constraint
    assert held_mask(frame).sum() == 3
    ready = constrain_held(frame)
    assert ready.calc is None and fixed_mask(ready).sum() == 3
    frame.arrays.pop("fixed")
    assert np.array_equal(held_mask(frame), fixed_mask(frame))


# ---------------------------------------------------------------------------------------- sites
@pytest.mark.parametrize("facet", ["fcc111", "fcc100", "fcc110"])
def test_named_sites_are_ases_add_adsorbate_sites(facet):
    slab = build_surface("Pt", facet[3:], size=(2, 2, 3), vacuum=6.0)
    for site in FACET_SITES[facet]:
        ref = ASE_BUILDERS[facet]("Pt", (2, 2, 3), a=EMT_LATTICE_CONSTANTS["Pt"], vacuum=6.0)
        add_adsorbate(ref, "H", 1.8, site)
        points = site_positions(slab, facet, site)
        assert len(points) == 4  # one per top-layer atom
        ours = place_adsorbate_on_site(slab, "H", points[0], height=1.8)
        assert np.allclose(find_mic(ours.positions[-1] - ref.positions[-1], ref.cell, ref.pbc)[0], 0.0, atol=1e-9)


@pytest.mark.parametrize("facet,kinds", [("fcc111", ("ontop", "bridge", "fcc", "hcp")), ("fcc100", ("ontop", "bridge", "hollow"))])
def test_symmetry_distinct_sites_are_named_as_ase_names_them(facet, kinds):
    """pymatgen's sites, named by how many atoms they touch (and hcp: an atom right below), include
    every ASE site of the same name, and no ASE site lies under a pymatgen site of another name."""
    slab = build_surface("Cu", facet[3:], size=(2, 2, 3))
    found = find_sites(slab, symmetry_reduce=False)
    assert {s.kind for s in found} == set(kinds)
    for kind in kinds:
        for point in site_positions(slab, facet, kind):
            nearest = min(found, key=lambda s: _xy_offset(s.position, point, slab))
            assert _xy_offset(nearest.position, point, slab) < 0.05 and nearest.kind == kind
    reduced = find_sites(slab)
    assert len(reduced) < len(found) and {s.kind for s in reduced} == set(kinds)
    counts: dict[str, int] = {}
    for s in reduced:  # labels <kind>_<k>, numbered within each kind
        assert s.label == f"{s.kind}_{counts.get(s.kind, 0)}"
        counts[s.kind] = counts.get(s.kind, 0) + 1


def test_stepped_sites_lie_over_the_step():
    slab = build_slab("Cu", "fcc211", (3, 2, 4))
    z = slab.positions[:, 2]
    for site in FACET_SITES["fcc211"]:
        points = site_positions(slab, "fcc211", site)
        assert points, site
        if site == "ontop_step":  # exactly over the highest atoms
            top = np.flatnonzero(z > z.max() - 0.05)
            assert all(min(_xy_offset(p, slab.positions[i], slab) for i in top) < 1e-9 for p in points)
    with pytest.raises(ValueError, match="unknown \\(211\\) site"):
        site_positions(slab, "fcc211", "fcc")


# ------------------------------------------------------------------------------------ placement
@pytest.mark.parametrize("facet", FACETS)
@pytest.mark.parametrize("adsorbate", ["H", "O", "CO", "CH3", "H2O", "NH2"])
def test_placed_binding_atom_sits_at_its_binding_distance(facet, adsorbate):
    """On every named site of every facet the binding atom is at least its binding distance from every
    metal atom and every other atom at least the clearance, at the lowest such height: one of the two
    is exactly met (the binding distance itself unless the rest of the molecule holds it up)."""
    slab = build_slab("Ni", facet, (3, 2, 3) if facet == "fcc211" else (2, 2, 3))
    n = len(slab)
    for site in FACET_SITES[facet]:
        system = place_adsorbate_on_site(slab, adsorbate, site_positions(slab, facet, site)[0])
        d = _metal_distances(system, n)
        binding = binding_distance(system[n].symbol)
        assert d[0].min() >= binding - 1e-9 and (d[1:] >= OTHER_ATOM_CLEARANCE - 1e-9).all(), site
        tight = abs(d[0].min() - binding) < 1e-9 or (len(d) > 1 and abs(d[1:].min() - OTHER_ATOM_CLEARANCE) < 1e-9)
        assert tight, (site, d.min(axis=1))
        if len(system) - n == 1 or adsorbate == "CO":  # nothing else is near the surface
            assert d[0].min() == pytest.approx(binding, abs=1e-9)
        assert system.get_tags()[n:].tolist() == [2] * (len(system) - n)
        assert np.array_equal(fixed_mask(system)[:n], fixed_mask(slab))  # the slab's constraint kept


def test_placement_on_pymatgen_sites():
    slab = build_surface("Pt", "111", size=(3, 3, 4))
    for site in find_sites(slab):
        system = place_adsorbate_on_site(slab, "OH", site)
        d = _metal_distances(system, len(slab))
        assert d[0].min() == pytest.approx(binding_distance("O"), abs=1e-9) and d[1].min() >= OTHER_ATOM_CLEARANCE - 1e-9
        assert _xy_offset(system.positions[len(slab)], site.position, slab) < 1e-9


def test_random_placement_of_data_generation():
    """Jittered height (binding distance -0.05..+0.25 A), tilt at most 15 degrees from the normal,
    one FixAtoms constraint: the slab's fixed atoms."""
    slab = build_slab("Pd", "fcc111", (3, 3, 3))
    n = len(slab)
    rng = np.random.default_rng(0)
    for k in range(20):
        xy = rng.uniform(0.0, 1.0, size=2) @ slab.cell.array[:2, :2] if k % 2 else site_positions(slab, "fcc111", "hcp")[0]
        system = place_adsorbate(slab, "CO", xy, rng)
        d = _metal_distances(system, n)[0].min()
        assert binding_distance("C") - 0.05 - 1e-9 <= d <= binding_distance("C") + 0.25 + 1e-9
        axis = system.positions[n + 1] - system.positions[n]
        assert np.degrees(np.arccos(axis[2] / np.linalg.norm(axis))) <= 15.0 + 1e-9
        (constraint,) = system.constraints
        assert isinstance(constraint, FixAtoms) and sorted(constraint.index) == sorted(np.flatnonzero(fixed_mask(slab)))
    assert RANDOM_SITE not in FACET_SITES["fcc111"]
