"""``equiformer-calc specialize``: fine-tune a checkpoint on your own systems against your own reference
calculator with the active-learning loop of ``distil`` (:mod:`equiformer_calc.workflows.active_learning`),
and write a checkpoint whose card records what it was specialised on and its held-out relaxation agreement.
Resumable: rerun the same command after an interruption."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .distil import add_loop_arguments, loop_config, train_fn

__all__ = ["HELP", "add_arguments", "run"]

log = logging.getLogger(__name__)

HELP = "fine-tune a checkpoint on your slabs/adsorbates against your reference calculator (active learning)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``equiformer-calc specialize``."""
    parser.add_argument("checkpoint", help="checkpoint to start from (file or shipped name)")
    parser.add_argument("--reference", required=True,
                        help="reference calculator: a labeller name (emt, sevennet) or module:factory returning an "
                        "ASE calculator (your DFT set-up)")
    parser.add_argument("--adsorbates", nargs="+", required=True, help="adsorbates (names of the catalogue)")
    src = parser.add_argument_group("surfaces (give slab files, or metals and facets)")
    src.add_argument("--slabs", nargs="+", type=Path, help="clean slab files (any ASE format; constraints kept, else "
                     "the bottom half is fixed)")
    src.add_argument("--metals", nargs="+", help="metals (with --facets): slabs built as data generation does")
    src.add_argument("--facets", nargs="+", default=["fcc111"], help="facets with --metals (default: fcc111)")
    parser.add_argument("--heldout-sites", type=int, default=1,
                        help="site kinds per (surface, adsorbate) held out for the card's numbers (default 1)")
    parser.add_argument("--out", type=Path, required=True, help="campaign folder")
    parser.add_argument("--name", help="name of the written checkpoint (default: <checkpoint>-specialized)")
    add_loop_arguments(parser, rounds=2, train_steps=1000)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``equiformer-calc specialize``."""
    from ase.io import read

    from ..runtime import set_threads
    from ..workflows.active_learning import file_pool, plan_pool, run_active_learning, write_specialized_checkpoint

    set_threads(args.threads)
    if bool(args.slabs) == bool(args.metals):
        raise ValueError("give either --slabs FILE... or --metals METAL... (with --facets)")
    if args.slabs:
        missing = [str(p) for p in args.slabs if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"slab file(s) not found: {missing}")
        pool = file_pool([(p.stem, read(str(p))) for p in args.slabs], args.adsorbates, args.heldout_sites, args.seed)
    else:
        pool = plan_pool(metals=args.metals, facets=args.facets, adsorbates=args.adsorbates,
                         heldout_per_group=args.heldout_sites, seed=args.seed)
    if not pool.heldout:
        raise ValueError("no held-out site: every surface needs at least two site kinds (or --heldout-sites 0 is "
                         "not allowed here, since the card reports held-out agreement)")
    cfg = loop_config(args, str(args.out), args.checkpoint, args.reference)
    campaign = run_active_learning(cfg, pool, train_fn, progress=not args.no_progress, evaluate=True,
                                   stop_after=args.stop_after)
    if "final_checkpoint" not in campaign:
        print("specialize: not finished (rerun the same command to continue)")
        return 0
    name = args.name or f"{Path(str(args.checkpoint)).stem}-specialized"
    path = write_specialized_checkpoint(campaign, pool, args.out / f"{name}.safetensors")
    h = campaign["rounds"][max(campaign["rounds"], key=int)]["phases"]["evaluate"]
    start = campaign.get("heldout_start", {})
    print(f"wrote {path}: held-out relaxed adsorption-energy MAE {start.get('adsorption_energy_mae')} -> "
          f"{h.get('adsorption_energy_mae')} eV over {h.get('n_scored')} sites")
    return 0
