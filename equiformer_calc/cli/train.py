"""``equiformer-calc train``: train a model from a YAML config (the trainer is
:func:`equiformer_calc.train.trainer.train`); resumable, DDP under torchrun."""

from __future__ import annotations

import argparse
import json
import logging

from ..train.trainer import TrainConfig, train

__all__ = ["HELP", "add_arguments", "run"]

log = logging.getLogger(__name__)


HELP = "train an Equiformer on labelled structures (YAML config); resumable, DDP-capable"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML file with TrainConfig fields (train, val, out, preset, ...)")
    parser.add_argument("--max-steps", type=int, help="override max_steps")
    parser.add_argument("--out", help="override the output folder")
    parser.add_argument("--time-limit", type=float, help="stop resumably after this many seconds")
    parser.add_argument(
        "--init-from",
        metavar="NAME|PATH",
        help="fine-tune a trained checkpoint: its architecture and weights, a new energy reference fit on this "
        "data, and (unless --lr is given) a lower learning rate of 2e-4 with 50 warm-up steps",
    )
    parser.add_argument("--lr", type=float, help="override the peak learning rate")


def run(args: argparse.Namespace) -> int:
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
    summary = train(cfg)
    log.info("done: %s", json.dumps(summary))
    return 0
