"""Adsorbate screening: surfaces x adsorbates x symmetry-distinct sites -> adsorption energies.

Python::

    from equiformer_calc import screen_adsorbates
    from equiformer_calc.surfaces import build_surface
    slabs = {f"{m}-fcc111": build_surface(m, "111") for m in ("Cu", "Pt")}
    out = screen_adsorbates(slabs, ["O", "OH", "CO"], db="screen.db", out_dir="screen")
    out.summary  # one row per (surface, adsorbate): minimum adsorption energy and its site

Command line::

    equiformer-calc screen --metals Cu,Pt --facets 111,100 --adsorbates O,OH,CO --db screen.db --out-dir screen

What it does:

1. **Surfaces**: ASE's fcc111/100/110/211 builders at the EMT lattice constants of
   :data:`equiformer_calc.surfaces.EMT_LATTICE_CONSTANTS` (:func:`~equiformer_calc.surfaces.build_surface`),
   or your own slabs as ASE ``Atoms`` or pymatgen ``Structure`` / ``Slab``
   (:func:`~equiformer_calc.surfaces.slab_from_any`: the
   surface normal must be the third lattice vector; the slab is re-oriented so that it is +z).
2. **Sites** (:func:`~equiformer_calc.surfaces.find_sites`): pymatgen's ``AdsorbateSiteFinder``
   (symmetry-reduced), each site re-labelled by
   the number of surface atoms it touches: ``ontop`` (1), ``bridge`` (2), ``fcc`` / ``hcp``
   (3-fold; hcp when an atom of the second layer lies right below) and ``hollow`` (4-fold).
3. **Placement**: the adsorbate's binding atom (the first atom; templates of
   :data:`~equiformer_calc.surfaces.ADSORBATES` for names) goes above the site at the
   binding distance used by the data generator, the rest of the molecule pointing up
   (:func:`~equiformer_calc.surfaces.place_adsorbate_on_site`).
4. **Relaxation** of every structure with :func:`~equiformer_calc.workflows.batch.relax_batch`
   (one batched model call per step): first the gas-phase references and the clean slabs, then
   all adsorbate systems. The ``fix_bottom`` lowest layers are fixed in slabs and adsorbate
   systems alike.
5. **Adsorption energy** ``E_ads = E(slab+ads) - E(slab) - sum_X n_X mu_X`` with OC20-style
   gas-phase references relaxed with the same model: ``mu_H = E(H2)/2``,
   ``mu_O = E(H2O) - E(H2)``, ``mu_C = E(CO) - mu_O``, ``mu_N = E(N2)/2``.
6. **Checks** against the initial site (:func:`equiformer_calc.surfaces.check_relaxation`, one set of
   thresholds for the whole package): ``desorbed`` (no adsorbate atom in contact with the surface),
   ``dissociated`` (the adsorbate's bond graph fell apart), ``moved`` (binding atom more than
   ``move_tolerance`` A away laterally; ``final_site`` names the nearest site kind) and
   ``surface_changed`` (a slab atom moved more than 1 A). The minimum per (surface, adsorbate)
   is taken over converged, non-desorbed, non-dissociated sites.

**Database**: every relaxed structure (gas, slab, adsorbate system) is one row of an ASE database
(``ase.db.connect(db)``) with its energy, forces, the key-value pairs above and, in ``data``,
the energy and force criterion of every step and the initial positions. A path gives SQLite;
the same code works with ASE's PostgreSQL backend by passing a URL such as
``postgresql://user:password@host:5432/screening`` (needs ``psycopg2``; not tested here).

**Resumable**: every (surface, adsorbate, site) -- and every gas molecule and clean slab -- has a
unique ``task_key`` (``ads/Cu-fcc111/O/fcc_0``). Rows are written one by one as relaxations
finish, each in its own transaction, and existing rows are never modified. A killed run
restarted with the same arguments skips every task already in the database and loses only the
relaxations that were in flight; rerunning finished work does nothing (no model calls, no
writes). The database records the model's fingerprint; resuming with another model (or a
surface of the same name but another geometry) is an error rather than a silent mix.

**Outputs** (with ``out_dir``): ``screen_summary.csv`` (minimum E_ads per surface x adsorbate),
``screen_sites.csv`` (every site) and ``screen_heatmap.png``.

**Direct screening** (:func:`screen_direct`, ``screen --direct``): with a direct IS2RE model (an
OC20 IS2RE checkpoint of the reference Equiformer code, converted with ``convert-reference
--variant oc20-is2re``), every (surface, adsorbate, site) *initial* structure of steps 1-3 is
evaluated once, without relaxing: the model predicts the relaxed adsorption energy (OC20's
references) directly, which is OC20's IS2RE task. Atoms get OC20 tags (0: the ``fix_bottom``
subsurface layers, 1: the other slab atoms, 2: adsorbate). Sites are ranked by the prediction;
``screen_direct_sites.csv``, ``screen_direct_summary.csv`` and ``screen_direct_heatmap.png`` are
written (no database: nothing is relaxed).

The pieces: :mod:`.plan` (surfaces x adsorbates x sites -> tasks), :mod:`.store` (the database),
:mod:`.summary` (site rows, minima, CSV and heat map), :mod:`.screen` (:func:`screen_adsorbates`),
:mod:`.direct` (:func:`screen_direct`); the command line is :mod:`equiformer_calc.cli.screen`.
Surfaces, sites, placement and the checks are :mod:`equiformer_calc.surfaces`.
"""

from .direct import DirectScreenResult, screen_direct
from .screen import ScreenResult, screen_adsorbates
from .store import model_fingerprint
from .summary import plot_heatmap, write_screen_outputs

__all__ = [
    "DirectScreenResult", "ScreenResult", "model_fingerprint", "plot_heatmap",
    "screen_adsorbates", "screen_direct", "write_screen_outputs",
]
