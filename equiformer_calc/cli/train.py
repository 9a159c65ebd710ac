"""``equiformer-calc train``: train a model from a YAML config (the trainer is
:func:`equiformer_calc.train.trainer.train`); resumable, DDP under torchrun."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ._common import POSITIVE_FLOAT, POSITIVE_INT, check_outputs

__all__ = ["HELP", "add_arguments", "run"]

log = logging.getLogger(__name__)


HELP = "train an Equiformer on labelled structures (YAML config); resumable, DDP-capable"

#: what the trainer writes into its output folder (its own state.pt and history.json are how a
#: rerun resumes, not inputs)
OUTPUT_FILES = ("best.safetensors", "last.safetensors", "state.pt", "history.json", "summary.json", "metrics.csv",
                "learning_curve.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``equiformer-calc train``."""
    parser.add_argument("config", help="YAML file with TrainConfig fields (train, val, out, preset, ...)")
    parser.add_argument("--max-steps", type=POSITIVE_INT, help="override max_steps")
    parser.add_argument("--out", help="override the output folder")
    parser.add_argument("--time-limit", type=POSITIVE_FLOAT, help="stop resumably after this many seconds")
    parser.add_argument(
        "--init-from",
        metavar="NAME|PATH",
        help="fine-tune a trained checkpoint: its architecture and weights, a new energy reference fit on this "
        "data, and (unless --lr is given) a lower learning rate of 2e-4 with 50 warm-up steps",
    )
    parser.add_argument("--lr", type=POSITIVE_FLOAT, help="override the peak learning rate")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``equiformer-calc train``."""
    from ..train.trainer import TrainConfig, train

    cfg = TrainConfig.from_yaml(args.config)
    if args.max_steps is not None:
        cfg.max_steps = args.max_steps
    if args.out:
        cfg.out = args.out
    if args.time_limit is not None:
        cfg.time_limit_s = args.time_limit
    if args.init_from:
        cfg.init_from = args.init_from
        if args.lr is None:
            cfg.lr, cfg.warmup_steps = min(cfg.lr, 2e-4), min(cfg.warmup_steps, 50)
    if args.lr is not None:
        cfg.lr = args.lr
    data = [p for key in ("train", "val") for p in ([getattr(cfg, key)] if isinstance(getattr(cfg, key), str)
                                                     else list(getattr(cfg, key) or []))]
    check_outputs([Path(cfg.out) / name for name in OUTPUT_FILES], [args.config, *data, cfg.init_from or None])
    summary = train(cfg)
    log.info("done: %s", json.dumps(summary))
    return 0
