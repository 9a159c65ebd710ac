"""Relax CO on Cu(111) with the shipped checkpoint: the project's main job.

    python examples/relax_co_cu111.py [--fmax 0.05] [--steps 300] [--out co_cu111.traj]
    python examples/relax_co_cu111.py --size 2x2x3 --steps 5          # a few-second smoke run

Builds a Cu(111) slab at the EMT lattice constant, puts CO (carbon down) on a top site, fixes the
two bottom layers and relaxes with BFGS through :func:`equiformer_calc.relax`. Writes the
trajectory, the relaxed structure (``*_final.extxyz``), the energy per step (CSV) and its plot
(PNG), and prints the C-O bond length and the C-Cu distance.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


from equiformer_calc import relax
from equiformer_calc.surfaces import build_surface, place_adsorbate_on_site, site_positions
from equiformer_calc.workflows.relax import write_relax_outputs

log = logging.getLogger("relax_co_cu111")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fmax", type=float, default=0.05, help="force convergence criterion (eV/A)")
    parser.add_argument("--steps", type=int, default=300, help="maximum optimizer steps")
    parser.add_argument("--size", default="3x3x4", help="slab size nx x ny x layers (default 3x3x4)")
    parser.add_argument("--optimizer", default="BFGS", choices=["BFGS", "FIRE", "LBFGS"])
    parser.add_argument("--out", default="co_cu111.traj", help="trajectory file (side files share its stem)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint name or path (default: the shipped one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    size = tuple(int(n) for n in args.size.split("x"))
    slab = build_surface("Cu", "111", size=size, vacuum=8.0)  # at the EMT lattice constant
    ontop = site_positions(slab, "fcc111", "ontop")[0]  # ASE's "ontop" site
    slab = place_adsorbate_on_site(slab, "CO", ontop)  # carbon down, 1.9 A above the top Cu

    result = relax(
        slab, calculator=args.checkpoint, fmax=args.fmax, steps=args.steps, optimizer=args.optimizer,
        fix_bottom=2, trajectory=args.out, logfile="-",
    )
    files = write_relax_outputs(result, Path(args.out).with_suffix(""))
    atoms = result.atoms
    c, o = len(atoms) - 2, len(atoms) - 1
    assert atoms[c].symbol == "C" and atoms[o].symbol == "O" and atoms.positions[c, 2] < atoms.positions[o, 2]
    cu = [a.index for a in atoms if a.symbol == "Cu"]
    c_cu = min(atoms.get_distance(c, i, mic=True) for i in cu)
    log.info(
        "converged=%s in %d steps; energy %.4f -> %.4f eV; C-O %.3f A; C-Cu %.3f A",
        result.converged, result.nsteps, result.initial_energy, result.final_energy,
        atoms.get_distance(c, o), c_cu,
    )
    log.info("wrote %s, %s", args.out, ", ".join(str(p) for p in files.values()))


if __name__ == "__main__":
    main()
