"""``equiformer-calc distil``: active-learning distillation of a student checkpoint from a teacher
(:mod:`equiformer_calc.workflows.active_learning`): rounds of student exploration, teacher labels on the
frames the student gets most wrong, and continued training on the base data plus every round's frames.
Resumable: rerun the same command after an interruption."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

__all__ = ["HELP", "add_arguments", "run", "add_loop_arguments", "loop_config", "train_fn"]

log = logging.getLogger(__name__)

HELP = "active-learning distillation: student exploration, teacher labels where it is wrong, continued training"

#: the default student's teacher data (base training set, lattice constants, held-out groups)
DEFAULT_BASE = "pbe-distilled-small-data"


def add_loop_arguments(parser: argparse.ArgumentParser, rounds: int, train_steps: int) -> None:
    """Options of the loop shared by ``distil`` and ``specialize``."""
    g = parser.add_argument_group("loop")
    g.add_argument("--rounds", type=int, default=rounds, help=f"rounds to run (default: {rounds})")
    g.add_argument("--first-round", type=int, default=1, help="number of the first round (folder roundN; default 1)")
    g.add_argument("--explore-systems", type=int, default=200, help="starting structures per round (default 200)")
    g.add_argument("--clean-fraction", type=float, default=0.15,
                   help="share of starting structures that are clean slabs (default 0.15)")
    g.add_argument("--md-systems", type=int, default=40, help="student minima given a short MD (default 40)")
    g.add_argument("--teacher-calls", type=int, default=1200,
                   help="teacher single points per round after the prefilter (default 1200)")
    g.add_argument("--teacher-relax-systems", type=int, default=40,
                   help="worst student minima the teacher takes a few steps from (default 40)")
    g.add_argument("--max-new-frames", type=int, default=1500, help="frames selected per round at most (default 1500)")
    g.add_argument("--train-steps", type=int, default=train_steps, help=f"training steps per round (default {train_steps})")
    g.add_argument("--time-limit", type=float, default=0.0,
                   help="stop a round's training resumably after this many seconds (0: none)")
    g.add_argument("--lr", type=float, default=5e-4, help="peak learning rate of each round's warm restart (default 5e-4)")
    g.add_argument("--warmup-steps", type=int, default=100, help="warm-up steps of each round (default 100)")
    g.add_argument("--train-option", action="append", default=[], metavar="KEY=VALUE",
                   help="other trainer field (YAML value), e.g. batch_size=4; repeatable")
    g.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--stop-after", choices=("explore", "label", "select"), help="stop after this phase (debugging)")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _train_options(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--train-option takes KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def loop_config(args: argparse.Namespace, out: str, init: str, teacher: str, **extra: Any) -> Any:
    """An :class:`~equiformer_calc.workflows.active_learning.ALConfig` from the shared options."""
    from ..workflows.active_learning import ALConfig

    return ALConfig(
        out=out, init=init, teacher=teacher, first_round=args.first_round, rounds=args.rounds,
        explore_systems=args.explore_systems, clean_fraction=args.clean_fraction, md_systems=args.md_systems, teacher_calls=args.teacher_calls,
        teacher_relax_systems=args.teacher_relax_systems, max_new_frames=args.max_new_frames,
        train_steps=args.train_steps, time_limit_s=args.time_limit, lr=args.lr, warmup_steps=args.warmup_steps,
        train_overrides=_train_options(args.train_option), threads=args.threads, seed=args.seed, **extra,
    )


def train_fn(config: dict[str, Any]) -> dict[str, Any]:
    """The loop's training step: :func:`equiformer_calc.train.trainer.train` on these fields."""
    from ..train.trainer import TrainConfig, train

    names = set(TrainConfig.__dataclass_fields__)
    unknown = set(config) - names
    if unknown:
        raise ValueError(f"unknown trainer field(s) {sorted(unknown)} (from --train-option?)")
    return train(TrainConfig(**config))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``equiformer-calc distil``."""
    parser.add_argument("--out", default="checkpoints/pbe-distilled-al", help="campaign folder (default: %(default)s)")
    parser.add_argument("--init", default="pbe-distilled-small",
                        help="checkpoint the first round starts from (default: %(default)s)")
    parser.add_argument("--teacher", default="sevennet",
                        help="teacher labeller: sevennet, emt or module:factory (default: %(default)s)")
    parser.add_argument("--base-data", default=DEFAULT_BASE,
                        help="datagen folder whose train/val files every round trains on and whose held-out groups "
                        "(test_id, test_ood, relaxation references) exploration never visits; a folder name under "
                        "checkpoints/ or a path (default: %(default)s); 'none' for no base data")
    parser.add_argument("--metals", nargs="+", help="metals to explore (default: the teacher plan's)")
    parser.add_argument("--facets", nargs="+", help="facets to explore (default: all)")
    parser.add_argument("--adsorbates", nargs="+", help="adsorbates to explore (default: all)")
    add_loop_arguments(parser, rounds=1, train_steps=4000)


def _base_dir(name: str) -> Path | None:
    if name.lower() == "none":
        return None
    for path in (Path(name), Path("checkpoints") / name):  # relative paths stay relative (campaign files move)
        if path.is_dir():
            return path
    from ..checkpoint import checkpoint_dirs

    for d in checkpoint_dirs():
        if (d / name).is_dir():
            return d / name
    raise FileNotFoundError(f"base data folder {name!r} not found (a path, or a folder under checkpoints/)")


def _split_file(folder: Path, split: str) -> str:
    for name in (f"{split}.extxyz.xz", f"{split}.extxyz"):
        if (folder / name).is_file():
            return str(folder / name)
    raise FileNotFoundError(f"{folder} has no {split}.extxyz(.xz)")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``equiformer-calc distil``."""
    from ..runtime import set_threads
    from ..surfaces import FACETS, TEACHER_METALS
    from ..workflows.active_learning import excluded_groups, plan_pool, run_active_learning

    set_threads(args.threads)
    base = _base_dir(args.base_data)
    extra: dict[str, Any] = {}
    exclude: set = set()
    pairs: set = set()
    if base is not None:
        extra["base_train"] = [_split_file(base, "train")]
        extra["base_val"] = [_split_file(base, "val")]
        exclude, pairs = excluded_groups(base)
        summary = base / "summary.json"
        if summary.is_file():
            extra["lattice"] = json.loads(summary.read_text()).get("lattice_constants", {})
    pool = plan_pool(metals=args.metals or TEACHER_METALS, facets=args.facets or FACETS, adsorbates=args.adsorbates,
                     exclude=exclude, exclude_pairs=pairs, seed=args.seed)
    cfg = loop_config(args, args.out, args.init, args.teacher, **extra)
    log.info("distil: %d groups to explore (%d excluded as held out by %s)", len(pool.groups), len(exclude),
             base or "nothing")
    campaign = run_active_learning(cfg, pool, train_fn, progress=not args.no_progress, stop_after=args.stop_after)
    rounds = campaign.get("rounds", {})
    for number, record in sorted(rounds.items(), key=lambda kv: int(kv[0])):
        sel = record["phases"].get("select", {})
        lab = record["phases"].get("label", {})
        tr = record["phases"].get("train", {}).get("summary", {})
        print(f"round {number}: {lab.get('teacher_calls', '-')} teacher calls, {sel.get('n_selected', '-')} new frames, "
              f"training {'done at step ' + str(tr.get('steps')) if tr else 'not finished'}")
    return 0
