#!/usr/bin/env python
"""Relax the same Cu(111) systems with a student checkpoint and with its teacher, and compare.

``python benchmarks/teacher_spot_check.py [--model pbe-distilled-small] [--teacher sevennet]``

Clean 3x3x4 Cu(111) (bottom two layers fixed), CO on top and O in the fcc hollow, each relaxed with
BFGS (fmax 0.05 eV/A) by both calculators. Prints, per system: the largest difference between the two
relaxed geometries, the teacher's energy at the student's minimum above its own minimum, and the
adsorption energy E(slab+ads) - E(clean slab) of each (no gas references), as a Markdown table.
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pbe-distilled-small", help="student checkpoint name or path")
    parser.add_argument("--teacher", default="sevennet", help="labeller of the teacher (default sevennet)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch
    from ase.build import add_adsorbate, fcc111, molecule
    from ase.constraints import FixAtoms
    from ase.optimize import BFGS

    from equiformer_calc.calculators.local import EquiformerCalculator
    from equiformer_calc.data.labellers import resolve_labeller

    torch.set_num_threads(args.threads)
    calcs = {"student": EquiformerCalculator(checkpoint=args.model), "teacher": resolve_labeller(args.teacher).calculator()}
    relaxed: dict[str, dict] = {}
    for name in ("clean", "CO", "O"):
        slab = fcc111("Cu", (3, 3, 4), vacuum=8.0)
        slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag > 2]))
        if name == "CO":
            add_adsorbate(slab, molecule("CO"), 1.9, "ontop")
        elif name == "O":
            add_adsorbate(slab, "O", 1.3, "fcc")
        relaxed[name] = {}
        for who, calc in calcs.items():
            atoms = slab.copy()
            atoms.calc = calc
            BFGS(atoms, logfile=None).run(fmax=0.05, steps=200)
            relaxed[name][who] = atoms
    print("| system | largest position difference (A) | teacher at student minimum - teacher minimum (eV) "
          "| E_ads student (eV) | E_ads teacher (eV) |")
    print("|---|---:|---:|---:|---:|")
    for name, pair in relaxed.items():
        s, t = pair["student"], pair["teacher"]
        probe = s.copy()
        probe.calc = calcs["teacher"]
        gap = probe.get_potential_energy() - t.get_potential_energy()
        shift = np.abs(s.positions - t.positions).max()
        if name == "clean":
            cells = ["-", "-"]
        else:
            cells = [f"{pair[w].get_potential_energy() - relaxed['clean'][w].get_potential_energy():.2f}" for w in ("student", "teacher")]
        print(f"| {name} | {shift:.3f} | {gap:.3f} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
