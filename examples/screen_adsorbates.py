"""Screen O, OH and CO over several metals: adsorption energies into an ASE database.

    python examples/screen_adsorbates.py [--metals Cu,Pt] [--facets 111] [--out-dir screen_example]
    python examples/screen_adsorbates.py --metals Cu --adsorbates O --steps 3    # smoke run

The same as ``equiformer-calc screen``. Every relaxed structure goes to
``<out-dir>/screen.db`` (open it with ``ase db <out-dir>/screen.db`` or ``ase.db.connect``);
the run is resumable: interrupt it and run the same command again. Writes
``screen_summary.csv``, ``screen_sites.csv`` and ``screen_heatmap.png``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from equiformer_calc import screen_adsorbates
from equiformer_calc.surfaces import build_surface

log = logging.getLogger("screen_adsorbates")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metals", default="Cu,Pt")
    parser.add_argument("--facets", default="111")
    parser.add_argument("--adsorbates", default="O,OH,CO")
    parser.add_argument("--size", default="2x2x3", help="slab size nx x ny x layers (default 2x2x3)")
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--out-dir", default="screen_example")
    parser.add_argument("--checkpoint", default=None, help="checkpoint name or path (default: the shipped one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    size = tuple(int(n) for n in args.size.split("x"))
    slabs = {
        f"{metal}-fcc{facet}": build_surface(metal, facet, size=size)
        for metal in args.metals.split(",")
        for facet in args.facets.split(",")
    }
    out = Path(args.out_dir)
    result = screen_adsorbates(
        slabs, args.adsorbates.split(","), db=out / "screen.db", calculator=args.checkpoint, fmax=args.fmax,
        steps=args.steps, fix_bottom=1, out_dir=out,
    )
    for row in result.summary:
        e = row["e_ads_min"]
        log.info(
            "%-10s %-3s  E_ads = %s eV  (site %s, %d/%d sites valid)", row["surface"], row["adsorbate"],
            f"{e:+.3f}" if np.isfinite(e) else "  n/a ", row["site"] or "-", row["n_valid"], row["n_sites"],
        )
    log.info("%d relaxations run, %d reused from %s; wrote %s", result.computed, result.skipped, result.db,
             ", ".join(str(p) for p in result.files.values()))


if __name__ == "__main__":
    main()
