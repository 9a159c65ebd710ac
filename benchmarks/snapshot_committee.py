"""Would a committee of the distillation campaign's own students rank the default's energy errors? (issue 28)

A "snapshot" committee costs nothing to train: the active-learning rounds left a student per round
(``checkpoints/pbe-distilled-al/roundN/best.safetensors``; the default is round 8's). This measures, for several
sets of them, the Spearman correlation on adsorbate frames between |E_default - E_teacher| and (``std``) the
standard deviation of the default's and the members' energies or (``dev``) the members' mean |E_member -
E_default|, on the selection split of ``benchmarks/uncertainty.py`` (the validation frames of rounds 1-8:
held-out systems) and on the default's held-out test sets (``test_id``, ``test_ood``). Rounds 9-12 were trained
from round 8 on more of the campaign's frames; rounds 5-7 are its predecessors.

    OMP_NUM_THREADS=1 python benchmarks/snapshot_committee.py   # ~3 min; writes benchmarks/snapshot_committee.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's package, whatever the environment has installed
sys.path.insert(0, str(ROOT / "benchmarks"))
AL = ROOT / "checkpoints" / "pbe-distilled-al"
DATA = ROOT / "checkpoints" / "pbe-distilled-small-data"
COMBOS = [("r9", "r10", "r11", "r12"), ("r7", "r9", "r10", "r11", "r12"), ("r5", "r6", "r7"),
          ("r5", "r6", "r7", "r9", "r10", "r11", "r12"), ("r12",), ("r9",)]


def main() -> None:
    import torch
    from committee_members import read_frames
    from scipy.stats import spearmanr

    from equiformer_calc.checkpoint import load_checkpoint
    from equiformer_calc.predictor import Predictor

    torch.set_num_threads(1)
    sets = {"sel": [f for r in range(1, 9) for f in read_frames(AL / f"round{r}" / "val.extxyz.xz")],
            "test_id": read_frames(DATA / "test_id.extxyz.xz"), "test_ood": read_frames(DATA / "test_ood.extxyz.xz")}
    models = {"default": "pbe-distilled-small",
              **{f"r{r}": str(AL / f"round{r}" / "best.safetensors") for r in (5, 6, 7, 9, 10, 11, 12)}}
    energies: dict[str, dict[str, np.ndarray]] = {}
    for name, ckpt in models.items():
        predictor = Predictor(load_checkpoint(ckpt))
        t0 = time.time()
        energies[name] = {s: np.array([x["energy"] for x in predictor.predict(frames, ["energy"])])
                          for s, frames in sets.items()}
        print(f"{name}: {time.time() - t0:.0f} s", flush=True)  # noqa: T201 - a benchmark's progress
    out: dict[str, dict[str, float]] = {}
    for s, frames in sets.items():
        ref = np.array([f.get_potential_energy() for f in frames])
        ads = np.array([f.info.get("config_type") == "adsorbate" for f in frames])
        err = np.abs(energies["default"][s] - ref)
        for combo in COMBOS:
            members = np.stack([energies[m][s] for m in combo])
            spread = np.vstack([energies["default"][s][None], members]).std(axis=0)
            dev = np.abs(members - energies["default"][s]).mean(axis=0)
            key = f"{s}/{'+'.join(combo)}"
            out[key] = {"std": float(spearmanr(spread[ads], err[ads]).statistic),
                        "dev": float(spearmanr(dev[ads], err[ads]).statistic), "n": int(ads.sum())}
            print(key, out[key], flush=True)  # noqa: T201
    (ROOT / "benchmarks" / "snapshot_committee.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
