"""A volcano plot from a screen: adsorption free energies of O, OH, H (and CO, COOH) on fcc(111)
metals, then ORR/OER/HER/CO2RR limiting potentials on the computational hydrogen electrode.

    python examples/volcano.py [--metals Cu,Ag,Au,Ni,Pd,Pt] [--size 2x2x4]
    python examples/volcano.py --metals Cu,Pt --adsorbates O,OH,H --size 2x2x3 --steps 3   # smoke run

The same as two commands:

    equiformer-calc screen --metals Cu,Ag,Au,Ni,Pd,Pt --adsorbates O,OH,H,CO,COOH --size 2x2x4 \\
        --db volcano/screen.db --out-dir volcano --free-energy
    equiformer-calc free-energy volcano/screen_summary.csv --out-dir volcano

Writes ``volcano/che_volcano.png``, ``che_summary.csv``, ``che_steps.csv`` and one
``che_diagram_<surface>.png`` per surface. OOH*, which often dissociates in a relaxation, comes from
the scaling relation dG(OOH*) = dG(OH*) + 3.2 eV (noted in the CSV). Every number depends on the
accuracy of the model (the shipped default is 0.33 eV off its own teacher on relaxed adsorption energies, MAE).
"""

from __future__ import annotations

import argparse
import logging

from equiformer_calc import EquiformerCalculator
from equiformer_calc.surfaces import build_surface
from equiformer_calc.workflows import thermo
from equiformer_calc.workflows.screening import screen_adsorbates

log = logging.getLogger("volcano")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metals", default="Cu,Ag,Au,Ni,Pd,Pt")
    parser.add_argument("--adsorbates", default="O,OH,H,CO,COOH")
    parser.add_argument("--size", default="2x2x4", help="slab size nx x ny x layers")
    parser.add_argument("--steps", type=int, default=300, help="maximum relaxation steps")
    parser.add_argument("--temperature", type=float, default=298.15, help="K")
    parser.add_argument("--checkpoint", default=None, help="checkpoint name or path (default: the shipped one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    size = tuple(int(n) for n in args.size.split("x"))
    slabs = {f"{m}-111": build_surface(m, "111", size=size, vacuum=7.0) for m in args.metals.split(",")}
    calc = EquiformerCalculator(checkpoint=args.checkpoint)
    screen = screen_adsorbates(slabs, args.adsorbates.split(","), db="volcano/screen.db", calculator=calc,
                               steps=args.steps, out_dir="volcano", progress=False)
    rows = thermo.screen_free_energies(screen.summary, screen.db, calc, args.temperature, progress=False)
    thermo.write_summary_csv(rows, "volcano/screen_summary.csv")
    results, skipped = thermo.che_table(thermo.g_ads_by_surface(rows), thermo.load_schemes())
    for note in skipped:
        log.info("skipped: %s", note)
    files = thermo.write_che_outputs(results, "volcano")
    for r in results:
        log.info("%-8s %-5s dG(%s*) = %+.2f eV  U_L = %+.2f V  limiting step %d", r.surface, r.scheme.name,
                 r.scheme.descriptor, r.descriptor_value, r.limiting_potential, r.limiting_step)
    log.info("wrote %s", ", ".join(str(p) for p in files.values()))


if __name__ == "__main__":
    main()
