"""Surface chemistry without torch: slabs, adsorbates, sites and the checks of a relaxed adsorbate system.

One home for what data generation, screening and the AdsorbML-style benchmark share (ASE, pymatgen,
scipy only). Today: :mod:`.anomalies`, the one checker of relaxed adsorbate + slab structures.
"""

from .anomalies import (
    DESORPTION_FACTOR,
    DISSOCIATION_FACTOR,
    SURFACE_CHANGE,
    adsorbate_fragments,
    check_relaxation,
    is_desorbed,
)

__all__ = [
    "DESORPTION_FACTOR", "DISSOCIATION_FACTOR", "SURFACE_CHANGE", "adsorbate_fragments", "check_relaxation",
    "is_desorbed",
]
