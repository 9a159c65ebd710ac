"""
A short MD run of O on Pt(111)
==============================

:func:`~equiformer_calc.run_md` runs Langevin NVT or velocity-Verlet NVE dynamics with the
neighbour list reused between steps. Here: 100 fs of NVT at 300 K, then 100 fs of NVE from the
end point to see how well the total energy is conserved.
"""

# %%
import matplotlib.pyplot as plt
from ase.build import add_adsorbate

from equiformer_calc import run_md
from equiformer_calc.surfaces import build_surface

slab = build_surface("Pt", "111", size=(2, 2, 3), vacuum=8.0)
add_adsorbate(slab, "O", 1.2, "fcc")
nvt = run_md(slab, ensemble="nvt", temperature=300, timestep=1.0, steps=100, fix_bottom=1, progress=False)
print(f"NVT: T = {nvt.temperature[-1]:.0f} K after {nvt.time_fs[-1]:.0f} fs")

# %%
# NVE from the last NVT frame: the drift of the total energy is a check of the forces.
nve = run_md(nvt.atoms, ensemble="nve", timestep=1.0, steps=100, fix_bottom=1, progress=False)
print(f"NVE drift: {1000 * nve.drift_per_atom_per_ps:.2f} meV/atom/ps, "
      f"{nve.neighbor_builds} neighbour searches in {len(nve.time_fs) - 1} steps")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3), layout="constrained")
ax1.plot(nvt.time_fs, nvt.temperature, label="NVT")
ax1.plot(nvt.time_fs[-1] + nve.time_fs, nve.temperature, label="NVE")
ax1.set(xlabel="time (fs)", ylabel="temperature (K)")
ax1.legend()
ax2.plot(nve.time_fs, nve.total - nve.total[0], label="total")
ax2.plot(nve.time_fs, nve.potential - nve.potential[0], label="potential", alpha=0.6)
ax2.set(xlabel="time (fs)", ylabel="energy change (eV)")
ax2.legend()
plt.show()
