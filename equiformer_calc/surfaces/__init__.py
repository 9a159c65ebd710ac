"""Surface chemistry without torch: metals, adsorbates, slabs, sites, placement and the checks of a
relaxed adsorbate system (ASE, pymatgen and scipy only).

The one home of what data generation (:mod:`equiformer_calc.data`), screening
(:mod:`equiformer_calc.workflows.screening`) and the AdsorbML-style benchmark
(:mod:`equiformer_calc.workflows.adsorbml`) share:

* :mod:`.catalogue`: fcc metals and lattice constants, adsorbate templates and binding atoms, gas
  molecules and OC20's element references;
* :mod:`.slabs`: slab builders, slabs from pymatgen, fixed atoms (FixAtoms masks, bottom layers, tags);
* :mod:`.sites`: ASE's named sites and pymatgen's symmetry-distinct sites;
* :mod:`.placement`: an adsorbate on a site at its binding distance;
* :mod:`.anomalies`: the one checker of relaxed structures (AdsorbML's desorbed, dissociated, surface
  changed, intercalated; and site changed), with one documented set of thresholds.
"""

from .anomalies import (
    ANOMALIES,
    DESORPTION_FACTOR,
    DISSOCIATION_FACTOR,
    MOVE_TOLERANCE,
    SURFACE_BOND_CUSHION,
    SURFACE_CHANGE,
    adsorbate_fragments,
    check_relaxation,
    frozen_atoms,
    is_desorbed,
    is_intercalated,
    surface_bonds_changed,
)
from .catalogue import (
    ADSORBATES,
    EMT_LATTICE_CONSTANTS,
    GAS_MOLECULES,
    METALS,
    REFERENCE_MOLECULES,
    REFERENCE_SCHEME,
    TEACHER_METALS,
    adsorbate_template,
    ase_lattice_constant,
    build_adsorbate,
    gas_molecule,
    gas_reference_energy,
    lattice_constant,
    reference_potentials,
)
from .placement import (
    BINDING_DISTANCE,
    OTHER_ATOM_CLEARANCE,
    attach,
    binding_distance,
    place_adsorbate,
    place_adsorbate_on_site,
    placement_height,
)
from .sites import FACET_SITES, RANDOM_SITE, SITE_KINDS, Site, find_sites, site_kind, site_positions
from .slabs import (
    FACETS,
    LAYER_TOLERANCE,
    SLAB_VACUUM,
    add_fix_bottom,
    bottom_fixed_mask,
    build_slab,
    build_surface,
    constrain_held,
    drop_none_properties,
    facet_name,
    fixed_mask,
    held_mask,
    layer_indices,
    oc20_tags,
    slab_from_any,
)

__all__ = [
    "ANOMALIES", "ADSORBATES", "BINDING_DISTANCE", "DESORPTION_FACTOR", "DISSOCIATION_FACTOR", "EMT_LATTICE_CONSTANTS",
    "FACETS", "FACET_SITES", "GAS_MOLECULES", "LAYER_TOLERANCE", "METALS", "MOVE_TOLERANCE",
    "OTHER_ATOM_CLEARANCE", "RANDOM_SITE", "REFERENCE_MOLECULES", "REFERENCE_SCHEME", "SITE_KINDS",
    "SLAB_VACUUM", "SURFACE_BOND_CUSHION", "SURFACE_CHANGE", "TEACHER_METALS", "Site", "add_fix_bottom", "adsorbate_fragments",
    "adsorbate_template", "ase_lattice_constant", "attach", "binding_distance", "bottom_fixed_mask",
    "build_adsorbate", "build_slab", "build_surface", "check_relaxation", "constrain_held",
    "drop_none_properties", "facet_name", "find_sites", "fixed_mask", "frozen_atoms", "gas_molecule", "gas_reference_energy",
    "held_mask", "is_desorbed", "is_intercalated", "lattice_constant", "layer_indices", "oc20_tags", "place_adsorbate",
    "place_adsorbate_on_site", "placement_height", "reference_potentials", "site_kind", "site_positions",
    "slab_from_any", "surface_bonds_changed",
]
