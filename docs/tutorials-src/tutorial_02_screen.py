"""
A small adsorbate screen with its heat map
==========================================

:func:`~equiformer_calc.screen_adsorbates` relaxes every (surface, adsorbate, symmetry-distinct
site), references the adsorption energies to gas molecules relaxed with the same model and checks
each result for desorption, dissociation and site changes. Everything goes into an ASE database;
running the same call again reuses what is there. This one screens O and CO on Cu(111) and
Pt(111), on small slabs with a loose ``fmax`` so that it runs in seconds.
"""

# %%
# Run the screen
# --------------
import tempfile
from pathlib import Path

from equiformer_calc import screen_adsorbates
from equiformer_calc.surfaces import build_surface

out = Path(tempfile.mkdtemp())
slabs = {f"{metal}-fcc111": build_surface(metal, "111", size=(2, 2, 3)) for metal in ("Cu", "Pt")}
result = screen_adsorbates(
    slabs, ["O", "CO"], db=out / "screen.db", fmax=0.1, steps=60, fix_bottom=1, out_dir=out,
    site_kinds=["ontop", "fcc"], progress=False,
)
print(f"{result.computed} relaxations run, {result.skipped} reused")

# %%
# The summary
# -----------
# One row per (surface, adsorbate): the lowest adsorption energy over the valid sites and where.
for row in result.summary:
    print(f"{row['surface']:<10} {row['adsorbate']:<3} E_ads = {row['e_ads_min']:+.2f} eV "
          f"({row['site']}; {row['n_valid']}/{row['n_sites']} sites valid)")

# %%
# The heat map
# ------------
# ``out_dir`` also received ``screen_summary.csv``, ``screen_sites.csv`` and this heat map.
heatmap = result.files["heatmap"]

# %%
# Rerunning skips finished work
# -----------------------------
again = screen_adsorbates(
    slabs, ["O", "CO"], db=out / "screen.db", fmax=0.1, steps=60, fix_bottom=1,
    site_kinds=["ontop", "fcc"], progress=False,
)
print(f"second run: {again.computed} relaxations run, {again.skipped} reused")
