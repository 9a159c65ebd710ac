#!/usr/bin/env python
"""Fine-tuning a shipped checkpoint on a small set labelled by another calculator, against training
the same architecture from scratch for the same number of steps.

The user story: someone has a few hundred frames from their own method (here EMT stands in for it)
and wants a model of that method. ``equiformer-calc train --init-from NAME`` starts from the shipped
weights (a new energy reference fit, learning rate 2e-4); the scratch run uses the checkpoint's own
architecture with the default recipe (learning rate 2e-3). Both see the same frames, in the same
order, for the same number of steps, and are scored on held-out frames of the other method.

Steps (each through the real command line, so this measures what users run):

1. ``equiformer-calc datagen --size medium --labeller emt --seed 0`` (EMT: minutes; the command that
   made emt-small's data, reused if ``OUT/emt-data`` holds it); ``--frames`` training and
   ``--val-frames`` validation frames are drawn (seeded, disjoint) from its train split, so they
   come from other systems than the test set, which was drawn from its test_id split.
2. ``equiformer-calc train`` twice: ``init_from: BASE`` and from scratch, ``--steps`` each.
3. ``equiformer-calc evaluate`` of both (and of the untouched BASE) on ``--testset`` (default: the
   committed EMT test set ``checkpoints/emt-small.testset.extxyz``, held-out systems).

Prints a JSON summary; ``--update-results FILE`` replaces the fine-tuning section of RESULTS.md.

Example:
    python benchmarks/finetune.py --base pbe-distilled-small --frames 300 --steps 600 \\
        --update-results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase.io import read, write

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import machine_line, update_section  # noqa: E402

log = logging.getLogger("bench.finetune")
SECTION = "## Fine-tuning a shipped checkpoint on another method's frames"


def _cli(*args: str, capture: bool = False) -> str:
    cmd = [sys.executable, "-m", "equiformer_calc.cli", *args]
    log.info("$ %s", " ".join(cmd[2:]))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(cmd, check=True, text=True, env=env, stdout=subprocess.PIPE if capture else None)
    return done.stdout or ""


def _split(src: Path, train: Path, n_train: int, val: Path, n_val: int, seed: int) -> None:
    """Disjoint random ``n_train`` / ``n_val`` subsets of the frames of ``src`` (seeded)."""
    frames = read(str(src), index=":")
    if len(frames) < n_train + n_val:
        raise SystemExit(f"{src} has {len(frames)} frames, fewer than the {n_train} + {n_val} asked for")
    pick = np.random.default_rng(seed).permutation(len(frames))
    write(str(train), [frames[i] for i in sorted(pick[:n_train])], format="extxyz")
    write(str(val), [frames[i] for i in sorted(pick[n_train:n_train + n_val])], format="extxyz")


def _config(out: Path, run: str, train: Path, val: Path, steps: int, base: str, model: dict[str, Any],
            elements: list[str], cutoff: float) -> Path:
    import yaml

    cfg: dict[str, Any] = {
        "train": str(train), "val": str(val), "out": str(out / run), "seed": 0, "batch_size": 4,
        "max_steps": steps, "warmup_steps": 50, "val_every": max(steps // 6, 1), "max_val": 200,
        "energy_weight": 50.0, "threads": 1, "cutoff": cutoff,
    }
    if run == "finetune":
        cfg.update(init_from=base, lr=2e-4)
    else:
        cfg.update(elements=elements, model=model, lr=2e-3)
    path = out / f"{run}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _metrics(checkpoint: str, testset: Path) -> dict[str, float]:
    result = json.loads(_cli("evaluate", checkpoint, str(testset), "--by", "", "--no-progress", capture=True))
    overall = result["overall"]
    return {k: overall[k] for k in ("n_frames", "e_mae_atom", "f_mae", "s_mae") if k in overall}


def run_benchmark(base: str, frames: int, val_frames: int, steps: int, testset: Path, out: Path) -> dict[str, Any]:
    """Run the three steps above under ``out`` and return the summary (resumable: datagen and train
    reuse what is there)."""
    from equiformer_calc.checkpoint import load_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    data = out / "emt-data"
    _cli("datagen", "--out", str(data), "--size", "medium", "--labeller", "emt", "--seed", "0", "--no-progress")
    train, val = out / f"train{frames}.extxyz", out / f"val{val_frames}.extxyz"
    _split(data / "train.extxyz", train, frames, val, val_frames, seed=0)

    model = load_checkpoint(base)
    config = model.config.to_dict()
    elements, cutoff = list(config.pop("elements")), float(config.pop("cutoff"))
    summary: dict[str, Any] = {"base": base, "frames": frames, "val_frames": val_frames, "steps": steps,
                               "testset": str(testset.relative_to(ROOT) if testset.is_relative_to(ROOT) else testset),
                               "params": sum(p.numel() for p in model.parameters()), "runs": {}}
    summary["runs"]["base (no training)"] = _metrics(base, testset)
    for run in ("finetune", "scratch"):
        cfg = _config(out, run, train, val, steps, base, config, elements, cutoff)
        t0 = time.perf_counter()
        _cli("train", str(cfg))
        wall = time.perf_counter() - t0
        metrics = _metrics(str(out / run / "best.safetensors"), testset)
        history = json.loads((out / run / "history.json").read_text())
        curve = [(r["step"], r["val_f_mae"], r["val_e_mae_atom"]) for r in history if "val_f_mae" in r]
        summary["runs"][run] = {**metrics, "train_wall_s": round(wall, 1), "val_curve": curve}
    summary["machine"] = machine_line()
    return summary


def format_section(s: dict[str, Any], command: str) -> str:
    lines = [SECTION, "",
             s["machine"], "", f"`{command}` (1 thread per run). {s['frames']} EMT-labelled training frames "
             f"(drawn from the train split of datagen `--size medium --labeller emt --seed 0`), {s['val_frames']} validation frames, {s['steps']} steps of "
             f"batch 4 for each run; scored on `{s['testset']}` (EMT, held-out systems). Same architecture "
             f"({s['params']:,} parameters) in both runs: fine-tuned from `{s['base']}` (`train --init-from`, "
             "lr 2e-4, new energy references) or from scratch (lr 2e-3).", "",
             "| run | energy MAE (meV/atom) | force MAE (eV/A) | stress MAE (meV/A^3) |",
             "|---|---:|---:|---:|"]
    for name, m in s["runs"].items():
        stress = f"{1000 * m['s_mae']:.2f}" if "s_mae" in m else "-"
        lines.append(f"| {name} | {1000 * m['e_mae_atom']:.1f} | {m['f_mae']:.4f} | {stress} |")
    ft, sc = s["runs"]["finetune"], s["runs"]["scratch"]
    lines += ["", f"Fine-tuning / scratch error ratio: energy {ft['e_mae_atom'] / sc['e_mae_atom']:.2f}, "
              f"forces {ft['f_mae'] / sc['f_mae']:.2f} (below 1: fine-tuning is better at equal steps).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="pbe-distilled-small", help="shipped checkpoint name or path to fine-tune")
    parser.add_argument("--frames", type=int, default=300, help="training frames of the other method (default 300)")
    parser.add_argument("--val-frames", type=int, default=100, help="validation frames (default 100)")
    parser.add_argument("--steps", type=int, default=600, help="training steps of each run (default 600)")
    parser.add_argument("--testset", type=Path, default=ROOT / "checkpoints" / "emt-small.testset.extxyz")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "finetune-bench")
    parser.add_argument("--update-results", type=Path, metavar="RESULTS_MD")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = run_benchmark(args.base, args.frames, args.val_frames, args.steps, args.testset.resolve(), args.out)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    sys.stdout.write(json.dumps(summary, indent=1) + "\n")
    if args.update_results:
        command = "python benchmarks/finetune.py " + " ".join(a for a in (argv or sys.argv[1:]) if a)
        update_section(args.update_results, SECTION, format_section(summary, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
