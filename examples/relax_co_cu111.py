"""Relax CO on Cu(111) with the shipped checkpoint: the project's main job.

    python examples/relax_co_cu111.py [--fmax 0.05] [--out co_cu111.traj]
"""

from __future__ import annotations

import argparse
import logging

from ase.build import add_adsorbate, fcc111, molecule
from ase.constraints import FixAtoms
from ase.optimize import BFGS

from equiformer_calc import EquiformerCalculator

log = logging.getLogger("relax_co_cu111")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fmax", type=float, default=0.05, help="force convergence criterion (eV/A)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default="co_cu111.traj", help="trajectory file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    slab = fcc111("Cu", size=(3, 3, 4), a=3.59, vacuum=8.0)
    slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag > 2]))  # bottom two layers
    co = molecule("CO")
    co.rotate(180, "x")  # carbon down
    add_adsorbate(slab, co, height=1.9, position="ontop", mol_index=1)
    slab.calc = EquiformerCalculator()  # the default shipped checkpoint
    e0 = slab.get_potential_energy()
    opt = BFGS(slab, trajectory=args.out, logfile="-")
    converged = opt.run(fmax=args.fmax, steps=args.steps)
    log.info("converged=%s in %d steps; energy %.4f -> %.4f eV; C-O %.3f A; trajectory %s",
             converged, opt.nsteps, e0, slab.get_potential_energy(), slab.get_distance(-1, -2), args.out)


if __name__ == "__main__":
    main()
