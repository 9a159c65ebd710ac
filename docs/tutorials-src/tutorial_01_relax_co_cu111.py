"""
Relax CO on Cu(111)
===================

The project's main job, step by step: build a Cu(111) slab, put CO on a top site, relax it with the
shipped default checkpoint and look at what came out. ``examples/relax_co_cu111.py`` does the same
from the command line on a larger slab.
"""

# %%
# Build the system
# ----------------
# :func:`~equiformer_calc.surfaces.build_surface` makes an fcc slab at the lattice constant the
# catalogue knows; :func:`~equiformer_calc.surfaces.site_positions` lists ASE's named sites and
# :func:`~equiformer_calc.surfaces.place_adsorbate_on_site` puts the molecule upright, binding atom
# first (carbon down), at a sensible height.
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

from equiformer_calc import relax
from equiformer_calc.surfaces import build_surface, place_adsorbate_on_site, site_positions
from equiformer_calc.workflows.relax import write_relax_outputs

slab = build_surface("Cu", "111", size=(2, 2, 3), vacuum=8.0)
ontop = site_positions(slab, "fcc111", "ontop")[0]
system = place_adsorbate_on_site(slab, "CO", ontop)
print(system.get_chemical_formula(), len(system), "atoms, pbc", system.pbc)

# %%
# Relax
# -----
# :func:`~equiformer_calc.relax` attaches the default checkpoint (``pbe-distilled-small``), fixes
# the bottom two layers and runs BFGS until every force is below ``fmax``.
out = Path(tempfile.mkdtemp())
result = relax(system, fmax=0.05, steps=200, fix_bottom=2, trajectory=out / "co_cu111.traj")
print(f"converged: {result.converged} after {result.nsteps} steps")
print(f"energy: {result.initial_energy:.4f} -> {result.final_energy:.4f} eV")

atoms = result.atoms
c, o = len(atoms) - 2, len(atoms) - 1
cu = [a.index for a in atoms if a.symbol == "Cu"]
print(f"C-O {atoms.get_distance(c, o):.3f} A, C-Cu {min(atoms.get_distance(c, i, mic=True) for i in cu):.3f} A")

# %%
# The energy at every step
# ------------------------
# ``result.energies`` and ``result.fmax`` hold every step, the initial structure first.
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3), layout="constrained")
ax1.plot(result.energies, marker="o", ms=3)
ax1.set(xlabel="step", ylabel="energy (eV)")
ax2.semilogy(result.fmax, marker="o", ms=3)
ax2.axhline(0.05, color="grey", ls="--")
ax2.set(xlabel="step", ylabel="max force (eV/A)")
plt.show()

# %%
# Files
# -----
# :func:`~equiformer_calc.workflows.relax.write_relax_outputs` writes what ``equiformer-calc relax``
# writes: the relaxed structure (extxyz, with energy and forces), the per-step CSV and a plot.
files = write_relax_outputs(result, out / "co_cu111")
for kind, path in files.items():
    print(f"{kind:>10}: {path.name}")
