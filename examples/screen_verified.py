"""A screen you can trust: anomalies flagged, an uncertainty on every adsorption energy, and the best ML
sites verified by a reference calculator (AdsorbML's ML+SP / ML+RX), with the cost accounting.

    python examples/screen_verified.py                               # EMT as the reference
    python examples/screen_verified.py --reference sevennet          # the teacher (pip install -e ".[teacher]")
    python examples/screen_verified.py --reference mypkg.dft:make_calc --refine-mode relax   # your own DFT set-up
    python examples/screen_verified.py --reference sevennet --refine-mode relax   # the recommended verification
    python examples/screen_verified.py --metals Cu --adsorbates O --steps 3 --reference-steps 3   # smoke run

The model relaxes every site; the ``--top-k`` lowest valid minima of every (surface, adsorbate) get the
reference's single point (``--refine-mode sp``) or relaxation (``relax``, which by default also relaxes the
model's reconstructed or intercalated minima: ``--no-refine-anomalous`` skips them). The reference's
relaxations are steered by the model (the same force criterion in fewer reference calls;
``--refine-optimizer bfgs``: the reference alone). See docs/guide/screening.md. The same as ``equiformer-calc
screen ... --refine REF --top-k K --refine-mode sp|relax``. Then, for comparison, the reference alone relaxes
every site from its initial structure (``--no-reference-only`` skips it), and the script prints how many
reference calls and how much wall time each route took. Writes ``<out-dir>/screen.db``,
``screen_summary.csv`` (``e_ads_ref``, ``ref_calls``, ``ref_site`` ...), ``screen_sites.csv`` and
``screen_heatmap.png`` (cells whose committee spread exceeds ``--uncertainty-threshold`` hatched).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from equiformer_calc import screen_adsorbates
from equiformer_calc.surfaces import build_surface
from equiformer_calc.workflows.screening.refine import reference_only_screen

log = logging.getLogger("screen_verified")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metals", default="Cu,Pt")
    parser.add_argument("--adsorbates", default="O,CO")
    parser.add_argument("--site-kinds", default="ontop,fcc,hcp")
    parser.add_argument("--size", default="2x2x3", help="slab size nx x ny x layers (default 2x2x3)")
    parser.add_argument("--steps", type=int, default=150, help="ML relaxation steps")
    parser.add_argument("--reference", default="emt", help="labeller name or module:factory (default emt)")
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--refine-mode", choices=("sp", "relax"), default="sp")
    parser.add_argument("--refine-optimizer", choices=("bfgs", "surrogate"), default="surrogate",
                        help="how the reference relaxes: steered by the model (default; fewer reference calls) or "
                             "bfgs alone")
    parser.add_argument("--refine-anomalous", action=argparse.BooleanOptionalAction, default=None,
                        help="relax mode: the reference also relaxes the model's reconstructed / intercalated minima "
                             "(default: on in relax mode)")
    parser.add_argument("--reference-steps", type=int, default=200, help="reference relaxations' step limit")
    parser.add_argument("--no-reference-only", action="store_true", help="skip the reference-only comparison")
    parser.add_argument("--uncertainty-threshold", type=float, default=0.1)
    parser.add_argument("--out-dir", default="screen_verified")
    parser.add_argument("--checkpoint", default=None, help="checkpoint name or path (default: the shipped one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    size = tuple(int(n) for n in args.size.split("x"))
    slabs = {f"{m}-fcc111": build_surface(m, "111", size=size) for m in args.metals.split(",")}
    adsorbates = args.adsorbates.split(",")
    kinds = args.site_kinds.split(",") if args.site_kinds else None
    out = Path(args.out_dir)
    start = time.perf_counter()
    result = screen_adsorbates(
        slabs, adsorbates, db=out / "screen.db", calculator=args.checkpoint, steps=args.steps, fix_bottom=1,
        site_kinds=kinds, out_dir=out, refine=args.reference, top_k=args.top_k, refine_mode=args.refine_mode,
        refine_optimizer=args.refine_optimizer, refine_anomalous=args.refine_anomalous,
        refine_steps=args.reference_steps, uncertainty_threshold=args.uncertainty_threshold,
    )
    ml_wall = time.perf_counter() - start
    ref = result.refine
    for row in result.summary:
        e, u, e_ref = row["e_ads_min"], row["e_ads_uncertainty"], row["e_ads_ref"]
        log.info("%-10s %-3s ML %s eV%s at %-7s | %s %s eV at %-7s (%d calls)%s", row["surface"], row["adsorbate"],
                 f"{e:+.3f}" if np.isfinite(e) else "  n/a ", f" ± {u:.3f}" if np.isfinite(u) else "",
                 row["site"] or "-", ref.labeller, f"{e_ref:+.3f}" if np.isfinite(e_ref) else "  n/a ",
                 row["ref_site"] or "-", row["ref_calls"],
                 f"  [{row['n_anomalous']} anomalous: {row['note'] or 'flagged, not used'}]" if row["n_anomalous"] else "")
    log.info("ML screen + verification: %d reference calls (%d for gas + slabs), %.1f s in all", ref.calls,
             ref.reference_calls, ml_wall)
    if not args.no_reference_only:
        only = reference_only_screen(slabs, adsorbates, args.reference, kinds, 0.05, args.reference_steps, fix_bottom=1)
        best = {k: g["best"] for k, g in only.groups.items() if g["best"] is not None}
        calls, wall = only.calls, only.seconds
        hits = [abs(row["e_ads_ref"] - best[(row["surface"], row["adsorbate"])]) <= 0.1
                for row in result.summary if (row["surface"], row["adsorbate"]) in best and np.isfinite(row["e_ads_ref"])]
        log.info("reference only: %d reference calls, %.1f s; the verified best is within 0.1 eV of it in %d of %d "
                 "groups, for %.0f %% of its reference calls", calls, wall, sum(hits), len(hits),
                 100 * ref.calls / max(calls, 1))
    log.info("wrote %s", ", ".join(str(p) for p in result.files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
