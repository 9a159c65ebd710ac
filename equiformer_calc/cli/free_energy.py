"""``equiformer-calc free-energy``: adsorption free energies of a screen's best sites, and the
computational-hydrogen-electrode analysis of reaction schemes (ORR, OER, HER, CO2RR, or your own):
step free energies, limiting potentials, a volcano plot and free-energy diagrams (the workflow is
:mod:`equiformer_calc.workflows.thermo`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ._common import POSITIVE_FLOAT, add_model_arguments, calculator_from_args, check_outputs

__all__ = ["HELP", "add_arguments", "run"]

log = logging.getLogger(__name__)

HELP = "free energies, limiting potentials and volcano plots (CHE) from a screen's summary CSV and database"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``equiformer-calc free-energy``."""
    parser.add_argument("summary", help="screen_summary.csv of `equiformer-calc screen` (with or without --free-energy)")
    parser.add_argument("--db", default=None,
                        help="the screen's database: compute the free energies (vibrations of each best site and of "
                             "the gas references) when the summary has no g_ads column")
    parser.add_argument("--schemes", default=None,
                        help="comma-separated scheme names (default: every scheme whose adsorbates were screened)")
    parser.add_argument("--data", action="append", default=[], metavar="YAML",
                        help="extra gases/schemes (same form as the package's data/catalysis.yaml; repeatable)")
    parser.add_argument("--temperature", type=POSITIVE_FLOAT, default=298.15, help="K (default 298.15)")
    parser.add_argument("--pressure", type=POSITIVE_FLOAT, default=101325.0,
                        help="Pa, gas references (water keeps its 0.035 bar from the data; default 101325)")
    parser.add_argument("--electronic", action="store_true",
                        help="use the electronic adsorption energies (e_ads_min) as the free energies: no vibrations")
    parser.add_argument("--no-scaling", action="store_true",
                        help="no scaling relations (data: scaling_relations, e.g. OOH from OH) for missing adsorbates")
    parser.add_argument("--out-dir", default=".", help="folder for che_*.csv, che_volcano.png, che_diagram_*.png")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """``equiformer-calc free-energy``."""
    import numpy as np

    from ..workflows import thermo

    data = thermo.load_data(*args.data)
    schemes = thermo.load_schemes(data=data)
    if args.schemes:
        wanted = [s.strip() for s in args.schemes.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in schemes]
        if unknown:
            raise ValueError(f"unknown scheme(s) {unknown}; known: {sorted(schemes)} (add your own with --data)")
        schemes = {s: schemes[s] for s in wanted}
    out = Path(args.out_dir)
    check_outputs([out / "che_*", out / "free_energy_summary.csv", out / "vibrations_journal.jsonl"],
                  [args.summary, args.db, *args.data])
    rows = thermo.read_summary_csv(args.summary)
    column = "g_ads"
    if args.electronic:
        column = "e_ads_min"
        log.warning("--electronic: electronic adsorption energies stand in for free energies (no ZPE, no entropy)")
    elif not any(np.isfinite(float(r.get("g_ads", np.nan))) for r in rows):
        if args.db is None:
            raise ValueError(f"{args.summary} has no g_ads column: give the screen's --db to compute the free "
                             "energies, or --electronic to use the electronic energies")
        calc = calculator_from_args(args)
        rows = thermo.screen_free_energies(rows, args.db, calc, args.temperature, args.pressure, data,
                                           journal=out / "vibrations_journal.jsonl")
        path = thermo.write_summary_csv(rows, out / "free_energy_summary.csv")
        log.info("wrote %s", path)
    g = thermo.g_ads_by_surface(rows, column)
    screened = {a for v in g.values() for a in v}
    if not args.no_scaling:
        screened |= {a for a, rel in data.get("scaling_relations", {}).items() if rel["from"] in screened}
    if not args.schemes:
        schemes = {n: s for n, s in schemes.items() if set(s.adsorbates) <= screened}
        if not schemes:
            raise ValueError(f"no scheme has all its adsorbates among the screened ones ({sorted(screened)}); "
                             f"screen e.g. OH,O,OOH (ORR/OER), H (HER), COOH,CO (CO2RR)")
    results, skipped = thermo.che_table(g, schemes, data, scaling=not args.no_scaling)
    for note in skipped:
        log.warning("skipped: %s", note)
    if not results:
        raise ValueError("no surface has the adsorbates of the chosen schemes")
    files = thermo.write_che_outputs(results, out)
    print(f"{'surface':16s} {'scheme':7s} {'descriptor':>12s} {'U_L (V)':>8s} {'eta (V)':>8s}  limiting step")
    for r in results:
        s = r.scheme
        print(f"{r.surface:16s} {s.name:7s} {f'dG({s.descriptor}*)':>7s}{r.descriptor_value:+6.2f} "
              f"{r.limiting_potential:+8.3f} {r.overpotential:8.3f}  {r.limiting_step}: "
              f"{s.label(r.limiting_step - 1)} -> {s.label(r.limiting_step)}")
    print("(the numbers depend on the accuracy of the model that made the energies)")
    log.info("wrote %s", ", ".join(str(p) for p in files.values()))
    return 0
