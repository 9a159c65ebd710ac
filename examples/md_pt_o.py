"""Molecular dynamics of O on Pt(111): Langevin NVT equilibration, then NVE with the energy drift.

    python examples/md_pt_o.py [--temperature 300] [--nvt-steps 200] [--nve-steps 200] [--out-dir md_pt_o]
    python examples/md_pt_o.py --size 2x2x3 --nvt-steps 5 --nve-steps 5    # smoke run

The two bottom layers are fixed. Both stages reuse the neighbour list between steps (``--skin``;
identical results to rebuilding it every step). Writes ``nvt.traj`` / ``nve.traj`` with their
CSV logs and energy/temperature plots, and reports the NVE drift in meV/atom/ps.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


from equiformer_calc import EquiformerCalculator, run_md
from equiformer_calc.surfaces import build_surface, place_adsorbate_on_site, site_positions
from equiformer_calc.workflows.md import write_md_outputs

log = logging.getLogger("md_pt_o")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="3x3x3", help="slab size nx x ny x layers (default 3x3x3)")
    parser.add_argument("--temperature", type=float, default=300.0, help="K")
    parser.add_argument("--timestep", type=float, default=1.0, help="fs")
    parser.add_argument("--nvt-steps", type=int, default=200)
    parser.add_argument("--nve-steps", type=int, default=200)
    parser.add_argument("--skin", type=float, default=1.0, help="neighbour-list skin, A")
    parser.add_argument("--log-interval", type=int, default=10)
    parser.add_argument("--out-dir", default="md_pt_o")
    parser.add_argument("--checkpoint", default=None, help="checkpoint name or path (default: the shipped one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    size = tuple(int(n) for n in args.size.split("x"))
    slab = build_surface("Pt", "111", size=size, vacuum=7.0)  # at the EMT lattice constant
    slab = place_adsorbate_on_site(slab, "O", site_positions(slab, "fcc111", "fcc")[0], height=1.2)
    calc = EquiformerCalculator(args.checkpoint, skin=args.skin)

    nvt = run_md(
        slab, calculator=calc, ensemble="nvt", temperature=args.temperature, timestep=args.timestep,
        steps=args.nvt_steps, friction=0.02, trajectory=out / "nvt.traj", log_interval=args.log_interval,
        fix_bottom=2, seed=0,
    )
    write_md_outputs(nvt, out / "nvt", args.log_interval)
    log.info("NVT: mean temperature %.1f K over the last half", nvt.temperature[len(nvt.temperature) // 2 :].mean())

    nve = run_md(  # continue from the equilibrated state, velocities included
        nvt.atoms, calculator=calc, ensemble="nve", timestep=args.timestep, steps=args.nve_steps,
        trajectory=out / "nve.traj", log_interval=args.log_interval, init_velocities=False,
    )
    write_md_outputs(nve, out / "nve", args.log_interval)
    log.info(
        "NVE: drift %.3f meV/atom/ps, total-energy spread %.2f meV/atom; neighbour searches %s for %d steps",
        1e3 * nve.drift_per_atom_per_ps, 1e3 * (nve.total.max() - nve.total.min()) / len(nve.atoms),
        calc.neighbor_cache.builds if calc.neighbor_cache else "-", args.nvt_steps + args.nve_steps,
    )
    log.info("wrote %s/", out)


if __name__ == "__main__":
    main()
