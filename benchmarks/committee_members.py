"""Train the full-model committee members of a checkpoint (option (a) of issue 28's uncertainty).

Each member is the checkpoint fine-tuned for a few hundred steps (the trainer's ``init_from``) with its own
seed on its own bootstrap resample of the checkpoint's training data: ``--boot-size`` frames (default 2,000,
an m-out-of-n bootstrap: 300 steps of 4 frames see 1,200 frames, and reading + graphing 10,401 frames per
member would cost more CPU than the training) drawn with replacement.
Resumable after SIGKILL: every member's trainer keeps ``state.pt`` under ``runs/committee/<name>/member<k>``;
a finished member is copied to ``checkpoints/<name>-committee/member<k>.safetensors`` and skipped on rerun.

    nice -n 10 nohup python benchmarks/committee_members.py --members 4 --steps 300 > runs/committee.log 2>&1 &

The cheaper equivalent (readout heads on the frozen trunk) is ``equiformer_calc.committee.fit_head_committee``,
which ``benchmarks/uncertainty.py`` fits and compares with these members.
"""

from __future__ import annotations

import argparse
import logging
import sys
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's package, whatever the environment has installed
CKPT = ROOT / "equiformer_calc" / "checkpoints"

log = logging.getLogger("committee_members")


def read_frames(path: Path, pick: "np.ndarray | None" = None, n: int = 0, seed: int = 0, replace: bool = False) -> list:
    """Frames of an (xz-compressed) extxyz file, parsing only the chosen ones: ``pick`` (indices, repeats
    allowed) or ``n`` drawn with ``seed`` (``replace``: with replacement, a bootstrap; 0: all). Splitting
    the text by its atom-count lines is ~100x cheaper than ASE parsing all 10,401 training frames."""
    import io
    import lzma

    import ase.io

    text = (lzma.open(path, "rt") if str(path).endswith(".xz") else open(path)).read().splitlines(keepends=True)
    starts, k = [], 0
    while k < len(text):
        starts.append(k)
        k += int(text[k]) + 2
    if pick is None:
        if n <= 0 or (n >= len(starts) and not replace):
            pick = np.arange(len(starts))
        else:
            rng = np.random.default_rng(seed)
            pick = rng.integers(0, len(starts), n) if replace else np.sort(rng.choice(len(starts), n, replace=False))
    out = []
    for i in pick:
        a = starts[i]
        out.append(ase.io.read(io.StringIO("".join(text[a : a + int(text[a]) + 2])), format="extxyz"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="pbe-distilled-small")
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--boot-size", type=int, default=2000)
    ap.add_argument("--work", default=str(ROOT / "runs" / "committee"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import ase.io
    import yaml

    from equiformer_calc.train.trainer import TrainConfig, train

    recipe = yaml.safe_load((CKPT / f"{args.checkpoint}.yaml").read_text())
    data = CKPT / f"{args.checkpoint}-data"
    dest = CKPT / f"{args.checkpoint}-committee"
    dest.mkdir(exist_ok=True)
    for k in range(args.members):
        final = dest / f"member{k}.safetensors"
        if final.exists():
            log.info("member %d done: %s", k, final)
            continue
        work = Path(args.work) / args.checkpoint / f"member{k}"
        work.mkdir(parents=True, exist_ok=True)
        boot = work / "train.extxyz"
        if not boot.exists():
            frames = read_frames(data / "train.extxyz.xz", n=args.boot_size, seed=1000 + k, replace=True)
            tmp = boot.with_suffix(".tmp.extxyz")
            ase.io.write(tmp, frames, format="extxyz")
            tmp.replace(boot)
        cfg = TrainConfig(
            train=str(boot), val=str(data / "val.extxyz.xz"), out=str(work / "train"),
            elements=recipe["elements"], cutoff=recipe["cutoff"], seed=1 + k, batch_size=recipe["batch_size"],
            max_steps=args.steps, lr=args.lr, warmup_steps=20, min_lr_ratio=0.1, weight_decay=recipe["weight_decay"],
            energy_weight=recipe["energy_weight"], force_weight=recipe["force_weight"],
            stress_weight=recipe["stress_weight"], ema_decay=0.99, grad_clip=recipe["grad_clip"],
            val_every=args.steps // 2, max_val=50, threads=1, init_from=args.checkpoint,
        )
        summary = train(cfg)
        log.info("member %d: %s", k, summary)
        shutil.copyfile(work / "train" / "last.safetensors", final.with_suffix(".tmp"))
        final.with_suffix(".tmp").replace(final)


if __name__ == "__main__":
    main()
