"""Surfaces used by screening: site finding and placement, pymatgen slabs (None tags, oblique c),
the gas reference scheme."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import fcc111

from equiformer_calc.surfaces import (
    build_surface,
    find_sites,
    layer_indices,
    place_adsorbate_on_site,
    reference_potentials,
    slab_from_any,
)


def test_site_finding_and_placement():
    kinds111 = sorted(s.kind for s in find_sites(build_surface("Cu", "111", size=(2, 2, 3))))
    assert kinds111 == ["bridge", "fcc", "hcp", "ontop"]
    kinds100 = sorted(s.kind for s in find_sites(build_surface("Pt", "100", size=(2, 2, 3))))
    assert kinds100 == ["bridge", "hollow", "ontop"]
    slab = build_surface("Cu", "111", size=(2, 2, 3))
    site = next(s for s in find_sites(slab) if s.kind == "ontop")
    system = place_adsorbate_on_site(slab, "CO", site)
    assert system.get_chemical_symbols()[-2:] == ["C", "O"]  # binding atom first, i.e. down
    assert system.positions[-1, 2] > system.positions[-2, 2] > slab.positions[:, 2].max() + 1.5


def test_pymatgen_slab_with_none_tags_converts():
    from pymatgen.analysis.adsorption import AdsorbateSiteFinder
    from pymatgen.core import Molecule
    from pymatgen.io.ase import AseAtomsAdaptor

    slab = fcc111("Cu", (2, 2, 3), vacuum=6.0)
    slab.pbc = True
    slab.positions[:, 2] += 5.0  # straddles the periodic boundary along c
    slab.wrap()
    structure = AseAtomsAdaptor.get_structure(slab)
    finder = AdsorbateSiteFinder(structure)
    with_o = finder.add_adsorbate(Molecule(["O"], [[0, 0, 0]]), finder.find_adsorption_sites()["ontop"][0])
    assert None in with_o.site_properties["tags"]
    atoms = slab_from_any(with_o)
    assert atoms.pbc.tolist() == [True, True, False]
    assert atoms.get_chemical_symbols()[-1] == "O"
    z = atoms.positions[:, 2]
    assert z[-1] == z.max() and np.ptp(z) < 8.0  # contiguous slab, adsorbate on top


def test_pymatgen_slab_generator_slab_with_oblique_c():
    """SlabGenerator's (111) slab has a tilted third vector: after conversion it is along z, the
    slab is unchanged, and every site gets its adsorbate at the binding distance."""
    from pymatgen.core import Lattice, Structure
    from pymatgen.core.surface import SlabGenerator

    a = 3.92
    bulk_pt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Pt"], [[0, 0, 0]])
    slab = SlabGenerator(bulk_pt, (1, 1, 1), min_slab_size=2.5 * a / 3**0.5, min_vacuum_size=10.0,
                         center_slab=True, in_unit_planes=False, primitive=True).get_slab()
    assert abs(slab.lattice.matrix[2] @ np.cross(*slab.lattice.matrix[:2])) < 0.999 * np.prod(slab.lattice.abc)
    atoms = slab_from_any(slab)
    np.testing.assert_allclose(atoms.cell.array[2, :2], 0.0, atol=1e-9)
    assert atoms.pbc.tolist() == [True, True, False] and len(layer_indices(atoms.positions[:, 2])) == len(slab)
    assert layer_indices(atoms.positions[:, 2]).max() == 2  # 3 contiguous layers
    sites = find_sites(atoms)
    assert sorted(s.kind for s in sites) == ["bridge", "fcc", "hcp", "ontop"]
    for site in sites:
        system = place_adsorbate_on_site(atoms, "O", site)
        assert system.get_distances(-1, range(len(atoms)), mic=True).min() == pytest.approx(1.95, abs=1e-6)


def test_reference_potentials_scheme():
    mu = reference_potentials({"H2": -6.0, "H2O": -14.0, "CO": -15.0, "N2": -16.0})
    assert mu == {"H": -3.0, "O": -8.0, "C": -7.0, "N": -8.0}
