"""Barrier of an O hop from the fcc to the hcp hollow of Cu(111) by a climbing-image NEB.

    python examples/neb_o_cu111.py [--size 3x3x4] [--images 5]
    python examples/neb_o_cu111.py --size 2x2x3 --images 3 --steps 5     # a few-second smoke run

Relaxes both endpoints together (one batched model call per step), then optimises the band with all
images of a step in one batched call (ASE's NEB and FIRE), computes the saddle's vibrations and
writes ``neb_o_cu111/neb_profile.{csv,png}``, ``neb_band.extxyz`` and ``neb_result.json``. Stop it
and rerun: it continues from its journal. The barrier depends on the accuracy of the model.
"""

from __future__ import annotations

import argparse
import logging

from equiformer_calc import EquiformerCalculator, relax_batch
from equiformer_calc.surfaces import build_surface, place_adsorbate_on_site, site_positions
from equiformer_calc.workflows.neb import run_neb

log = logging.getLogger("neb_o_cu111")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="3x3x4", help="slab size nx x ny x layers (default 3x3x4)")
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300, help="maximum band optimisation steps")
    parser.add_argument("--checkpoint", default=None, help="checkpoint name or path (default: the shipped one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    size = tuple(int(n) for n in args.size.split("x"))
    slab = build_surface("Cu", "111", size=size, vacuum=8.0)
    ends = [place_adsorbate_on_site(slab, "O", site_positions(slab, "fcc111", site)[0]) for site in ("fcc", "hcp")]
    calc = EquiformerCalculator(checkpoint=args.checkpoint)
    initial, final = (r.atoms for r in relax_batch(ends, calculator=calc, fmax=0.02, steps=300, fix_bottom=2))
    result = run_neb(initial, final, images=args.images, calculator=calc, steps=args.steps, out_dir="neb_o_cu111")
    log.info("%s", result.summary())
    log.info("wrote %s", ", ".join(str(p) for p in result.files.values()))


if __name__ == "__main__":
    main()
