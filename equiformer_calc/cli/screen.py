"""``equiformer-calc screen``: adsorbate screening from the command line (the workflow is
:mod:`equiformer_calc.workflows.screening`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from ._common import (
    NONNEGATIVE_FLOAT, NONNEGATIVE_INT, OPTIMIZER_NAMES, POSITIVE_FLOAT, POSITIVE_INT, add_executor_arguments,
    add_model_arguments, calculator_from_args, check_outputs, executor_from_args, read_structure, settings_from_args,
)

__all__ = ["HELP", "add_arguments", "run"]

log = logging.getLogger(__name__)


HELP = "adsorbate screening over metals, facets and adsorbates into an ASE database"


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _size(text: str) -> tuple[int, int, int]:
    """``"3x3x4"`` -> (3, 3, 4); anything else is an argparse error naming the expected form."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected NXxNYxLAYERS with positive integers, e.g. 3x3x4, got {text!r}")
    return (int(parts[0]), int(parts[1]), int(parts[2]))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``equiformer-calc screen``."""
    parser.add_argument("--metals", type=_csv_list, default=[], help="comma-separated fcc metals, e.g. Cu,Pt")
    parser.add_argument("--facets", type=_csv_list, default=["111"], help="comma-separated: 111,100,110,211")
    parser.add_argument("--slab", action="append", default=[], metavar="FILE",
                        help="also screen this slab file (any ASE-readable format; repeatable)")
    parser.add_argument("--adsorbates", type=_csv_list, default=["O", "OH", "CO"], help="comma-separated names")
    parser.add_argument("--size", type=_size, default=(3, 3, 4), help="slab size NXxNYxLAYERS (default 3x3x4)")
    parser.add_argument("--vacuum", type=POSITIVE_FLOAT, default=7.0, help="vacuum on each side, A")
    parser.add_argument("--site-kinds", type=_csv_list, default=None, help="only these: ontop,bridge,fcc,hcp,hollow")
    parser.add_argument("--db", default="screen.db", help="ASE database: a path (SQLite) or a postgresql:// URL")
    parser.add_argument("--out-dir", default=".", help="folder for screen_summary.csv, screen_sites.csv, screen_heatmap.png")
    parser.add_argument("--fmax", type=POSITIVE_FLOAT, default=0.05, help="force criterion, eV/A (> 0; default 0.05)")
    parser.add_argument("--steps", type=NONNEGATIVE_INT, default=300, help="optimizer step limit (default 300)")
    parser.add_argument("--optimizer", default="FIRE", type=str.upper, choices=OPTIMIZER_NAMES)
    parser.add_argument("--fix-bottom", type=NONNEGATIVE_INT, default=2, metavar="K",
                        help="fixed bottom layers (default 2; at most the slab's layers)")
    parser.add_argument("--batch-size", type=POSITIVE_INT, default=64, help="relaxations in flight at once")
    parser.add_argument("--retry-failed", action="store_true", help="redo tasks that failed in an earlier run")
    parser.add_argument("--direct", action="store_true",
                        help="no relaxation: rank initial structures by a direct IS2RE model's predicted relaxed "
                             "adsorption energy (a converted OC20 IS2RE checkpoint); writes screen_direct_*.csv")
    ref = parser.add_argument_group("top-k verification by a reference calculator (AdsorbML's ML+SP / ML+RX)")
    ref.add_argument("--refine", metavar="CALC", default=None,
                     help="verify the best ML sites of every group with this reference: a labeller name (emt, "
                          "sevennet[:MODEL]) or module:factory returning any ASE calculator (your DFT set-up)")
    ref.add_argument("--top-k", type=POSITIVE_INT, default=3, metavar="K", help="ML minima per group to verify (default 3)")
    ref.add_argument("--refine-mode", choices=("sp", "relax"), default="sp",
                     help="sp: the reference's single point at each ML minimum; relax: its relaxation from it")
    ref.add_argument("--rank-by", choices=("energy", "lcb"), default="energy",
                     help="pick the K lowest by ML E_ads, or by E_ads - KAPPA x its committee spread (lcb)")
    ref.add_argument("--kappa", type=NONNEGATIVE_FLOAT, default=1.0, help="the spread's multiple for --rank-by lcb (default 1)")
    ref.add_argument("--refine-fmax", type=POSITIVE_FLOAT, default=None, help="reference relaxations' fmax (default --fmax)")
    ref.add_argument("--refine-optimizer", choices=("bfgs", "surrogate"), default="surrogate",
                     help="how the reference relaxes (gas molecules and clean slabs, and the candidates with "
                          "--refine-mode relax): surrogate (default: steered by the model, the same force criterion "
                          "on the reference's forces in fewer reference calls) or bfgs (the reference alone)")
    ref.add_argument("--refine-anomalous", action=argparse.BooleanOptionalAction, default=None,
                     help="also relax, with the reference, the model's reconstructed or intercalated minima below "
                          "the K-th valid one (the reference may climb out of the model's hole; costs calls beyond "
                          "K). Relax mode only; default: on with --refine-mode relax, off with sp")
    ref.add_argument("--refine-steps", type=NONNEGATIVE_INT, default=300, help="reference relaxations' step limit (default 300)")
    ref.add_argument("--journal-dir", default=None,
                     help="folder of the reference calls' journals (default: DB.refine next to the database)")
    parser.add_argument("--uncertainty-threshold", type=NONNEGATIVE_FLOAT, default=0.1, metavar="EV",
                        help="committee spread of E_ads above which a best site is marked uncertain (default 0.1)")
    parser.add_argument("--free-energy", action="store_true",
                        help="add zpe, ts, g_corr, g_ads, free_energy columns to screen_summary.csv for each best site "
                             "(batched vibrations; see `equiformer-calc free-energy`)")
    parser.add_argument("--temperature", type=POSITIVE_FLOAT, default=298.15, help="K, with --free-energy (default 298.15)")
    parser.add_argument("--pressure", type=POSITIVE_FLOAT, default=101325.0, help="Pa, gas references with --free-energy")
    add_model_arguments(parser)
    add_executor_arguments(parser)
    parser.add_argument("--chunk-size", type=POSITIVE_INT, default=16, metavar="K",
                        help="with --scheduler/--workers: relaxations per task, relaxed together in batched "
                             "model calls on one worker (default 16)")


def run(args: argparse.Namespace) -> int:
    """``equiformer-calc screen``."""
    import numpy as np

    from ..surfaces import build_surface, layer_indices
    from ..workflows.screening import screen_adsorbates, screen_direct

    db = None if "://" in args.db else args.db
    out_dir = Path(args.out_dir)
    check_outputs([db, out_dir / "screen_*.csv", out_dir / "screen_*.png"], [*args.slab, args.checkpoint])
    size = args.size
    slabs: dict[str, Any] = {}
    for metal in args.metals:
        for facet in args.facets:
            slab = build_surface(metal, facet, size=size, vacuum=args.vacuum)
            slabs[f"{metal}-{slab.info['facet']}"] = slab
    for path in args.slab:
        slabs[Path(path).stem] = read_structure(path)
    if not slabs:
        raise SystemExit("nothing to screen: give --metals (and --facets) and/or --slab FILE")
    for name, slab in slabs.items():
        layers = int(layer_indices(slab.positions[:, 2]).max()) + 1
        if args.fix_bottom > layers:
            raise ValueError(f"--fix-bottom {args.fix_bottom} is more than the {layers} atomic layers of surface "
                             f"{name!r}: give at most {layers} (with {layers} the whole slab is held fixed)")
    if args.direct:
        try:
            direct = screen_direct(
                slabs, args.adsorbates, calculator=settings_from_args(args), fix_bottom=args.fix_bottom,
                site_kinds=args.site_kinds, out_dir=args.out_dir,
            )
        except ValueError as exc:
            log.error("%s", exc)
            return 2
        for r in direct.summary:
            log.info("%-14s %-4s predicted relaxed E_ads,min = %+.3f eV at %s (%d sites)",
                     r["surface"], r["adsorbate"], r["e_ads_min"], r["site"], r["n_sites"])
        log.info("wrote %s", ", ".join(str(p) for p in direct.files.values()))
        return 0
    fan_out = args.scheduler is not None or args.workers is not None
    if args.refine_anomalous and args.refine_mode != "relax":
        raise ValueError("--refine-anomalous needs --refine-mode relax: a single point at an anomalous geometry "
                         "is anomalous too")
    if fan_out and args.dispersion:
        raise ValueError("--dispersion is not available with --scheduler/--workers yet (workers run the bare "
                         "model): screen without fan-out, or add D3 afterwards")
    calculator = calculator_from_args(args)
    with executor_from_args(args) as executor:
        result = screen_adsorbates(
            slabs, args.adsorbates, db=args.db, calculator=calculator, fmax=args.fmax, steps=args.steps,
            optimizer=args.optimizer, fix_bottom=args.fix_bottom, site_kinds=args.site_kinds, out_dir=args.out_dir,
            batch_size=args.batch_size, retry_failed=args.retry_failed,
            executor=executor if fan_out else None, chunk_size=args.chunk_size,
            refine=args.refine, top_k=args.top_k, refine_mode=args.refine_mode, rank_by=args.rank_by,
            kappa=args.kappa, refine_fmax=args.refine_fmax, refine_steps=args.refine_steps, refine_optimizer=args.refine_optimizer,
            refine_anomalous=args.refine_anomalous,
            journal_dir=args.journal_dir, uncertainty_threshold=args.uncertainty_threshold,
        )
    for r in result.summary:
        log.info(
            "%-14s %-4s E_ads,min = %s eV at %s%s (%d/%d sites valid)",
            r["surface"], r["adsorbate"], "  n/a " if not np.isfinite(r["e_ads_min"]) else f"{r['e_ads_min']:+.3f}",
            r["site"] or "-", f" -> {r['final_site']}" if r["moved"] else "", r["n_valid"], r["n_sites"],
        )
        if args.refine is not None:
            e_ref = r.get("e_ads_ref", float("nan"))
            log.info("%-14s %-4s reference (%s) E_ads,min = %s eV at %s (%d reference calls)", r["surface"],
                     r["adsorbate"], args.refine_mode, "  n/a " if not np.isfinite(e_ref) else f"{e_ref:+.3f}",
                     r.get("ref_site") or "-", r.get("ref_calls", 0))
    if result.refine is not None:
        ref = result.refine
        log.info("reference %s (%s, top %d): %d reference calls (%d for gas + slabs), %d paid by this run in %.1f s",
                 ref.labeller, ref.mode, args.top_k, ref.calls, ref.reference_calls, ref.paid_calls, ref.seconds)
        for key, error in ref.errors.items():
            log.error("reference %s: %s", key, error)
    if args.free_energy:  # the computation lives in workflows.thermo
        from ..workflows.thermo import screen_free_energies, write_summary_csv

        result.summary = screen_free_energies(result.summary, result.db, calculator, args.temperature, args.pressure,
                                              journal=Path(args.out_dir) / "vibrations_journal.jsonl")
        result.files["summary"] = write_summary_csv(result.summary, Path(args.out_dir) / "screen_summary.csv")
        for r in result.summary:
            log.info("%-14s %-4s G_ads = %+.3f eV (ZPE %.3f, TS %.3f eV at %g K)", r["surface"], r["adsorbate"],
                     r["g_ads"], r["zpe"], r["ts"], args.temperature)
    log.info("database %s; wrote %s", result.db, ", ".join(str(p) for p in result.files.values()))
    if result.errors or (result.refine is not None and result.refine.errors):
        log.error("%d task(s) failed (listed above and in screen_sites.csv); rerun to retry tasks that did not run, "
                  "add --retry-failed to redo failed structures", len(result.errors))
        return 1
    return 0
