"""Does the committee's uncertainty rank the real errors, and what does it cost? (issue 28)

Committees of one checkpoint (default ``pbe-distilled-small``), measured on held-out frames of its data
(``test_id``, ``test_ood``; all of them, or ``--eval-frames`` each drawn with seed 0):

* **heads**: readout heads on the frozen trunk (:func:`equiformer_calc.committee.fit_head_committee`),
  fitted in closed form on ``--fit-frames`` training frames (0: all); the first-layer perturbation is
  chosen among ``--perturb`` by the per-frame energy Spearman on the validation adsorbate frames
  (never on the test frames).
* **heads+error**: the same heads with the energy-error model
  (:func:`equiformer_calc.committee.add_error_model`, ``--k`` neighbours) fitted to the same frames.
* **heads+error_without_novelty**: the same with the novelty term off (energies only).

With ``--write`` the one of these three whose energy spread ranks the validation adsorbate frames' errors
best (per-frame Spearman, the target's measure) is saved next to the checkpoint (the shipped committee);
``chosen`` in the output says which, with every variant's validation score.
* **full**: the fine-tuned full models of ``benchmarks/committee_members.py``
  (``checkpoints/<name>-committee/member*.safetensors``), when they exist and without ``--skip-full``
  (with it, the earlier run's numbers are kept in the output, marked).

For each: Spearman between the uncertainty and the absolute error, for energy per frame (eV, on
adsorbate frames: what an adsorption energy needs) and per atom, and for forces (per atom: |F - F_ref|
against ``forces_uncertainty``), on all frames and on adsorbate frames; and the fraction of the 10 %
largest errors whose uncertainty is above the threshold (the 90th percentile of the uncertainty on the
validation frames, i.e. flagging ~10 % of them). Cost: one structure (Cu(111) 3x3x4 + CO, 38 atoms) per
call, median of ``--repeats`` calls, the model alone vs heads (energy / energy and forces) vs heads with
the error model vs the full committee (M model calls).

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/uncertainty.py --skip-full --write
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's package, whatever the environment has installed
CKPT = ROOT / "equiformer_calc" / "checkpoints"

log = logging.getLogger("uncertainty")


def _subsample(path: Path, n: int, seed: int = 0) -> list:
    """``n`` frames of ``path`` drawn without replacement with ``seed`` (all when n <= 0)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from committee_members import read_frames

    return read_frames(path, n=n, seed=seed)


def _errors(frames: list, preds: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per-frame |dE| (eV), |dE|/N and per-atom |dF| of the model's own prediction."""
    n = np.array([len(f) for f in frames], dtype=float)
    e = np.abs(np.array([p["energy"] for p in preds]) - np.array([f.get_potential_energy() for f in frames]))
    f = np.concatenate([np.linalg.norm(p["forces"] - fr.get_forces(), axis=1) for p, fr in zip(preds, frames)])
    return {"e": e / n, "e_frame": e, "f": f}


def _metrics(err: np.ndarray, spread: np.ndarray, threshold: float) -> dict[str, float]:
    from scipy.stats import spearmanr

    top = err >= np.quantile(err, 0.9)
    return {
        "spearman": float(spearmanr(spread, err).statistic),
        "top10_caught": float(np.mean(spread[top] > threshold)),
        "flagged": float(np.mean(spread > threshold)),
        "n": int(len(err)),
    }


def _evaluate(frames: list, preds: list[dict], spread_e: np.ndarray, spread_f: np.ndarray | None,
              thresholds: dict[str, float]) -> dict[str, Any]:
    err = _errors(frames, preds)
    n = np.array([len(f) for f in frames], dtype=float)
    out: dict[str, Any] = {"energy": _metrics(err["e"], spread_e, thresholds["e"])}
    if spread_f is not None:
        out["forces"] = _metrics(err["f"], spread_f, thresholds["f"])
    ads = np.array([f.info.get("config_type") == "adsorbate" for f in frames])
    if ads.any():
        out["adsorbate_energy"] = _metrics(err["e"][ads], spread_e[ads], thresholds["e"])
        # per frame (eV): what an adsorption energy's error is
        out["adsorbate_energy_frame"] = _metrics(err["e_frame"][ads], spread_e[ads] * n[ads],
                                                 thresholds.get("e_frame", np.inf))
        if spread_f is not None:
            atom_ads = np.concatenate([[a] * len(f) for a, f in zip(ads, frames)])
            out["adsorbate_forces"] = _metrics(err["f"][atom_ads], spread_f[atom_ads], thresholds["f"])
    if spread_f is not None:  # the force spread averaged per frame, as a proxy of the energy's uncertainty
        owner = np.concatenate([[k] * len(f) for k, f in enumerate(frames)])
        mean_f = np.bincount(owner, weights=spread_f) / np.bincount(owner)
        out["energy_by_mean_force_spread"] = _metrics(err["e"], mean_f, thresholds.get("fmean", np.inf))
        if ads.any():
            out["adsorbate_energy_by_mean_force_spread"] = _metrics(err["e"][ads], mean_f[ads],
                                                                    thresholds.get("fmean", np.inf))
    out["mae_e_per_atom"] = float(err["e"].mean())
    if ads.any():
        out["mae_e_frame_adsorbate"] = float(err["e_frame"][ads].mean())
    out["mae_f"] = float(err["f"].mean())
    return out


def _head_spreads(preds: list[dict], frames: list) -> tuple[np.ndarray, np.ndarray | None]:
    n = np.array([len(f) for f in frames], dtype=float)
    e = np.array([p["energy_uncertainty"] for p in preds]) / n
    f = np.concatenate([p["forces_uncertainty"] for p in preds]) if "forces_uncertainty" in preds[0] else None
    return e, f


def _full_predictions(members: list, frames: list) -> tuple[np.ndarray, np.ndarray]:
    """Spread (population std) of energy per atom and per-atom force vectors over full models."""
    es, fs = [], []
    for p in members:
        out = p.predict(frames)
        es.append([o["energy"] for o in out])
        fs.append(np.concatenate([o["forces"] for o in out]))
    es_a, fs_a = np.array(es), np.array(fs)
    n = np.array([len(f) for f in frames], dtype=float)
    e = es_a.std(axis=0) / n
    f = np.sqrt(((fs_a - fs_a.mean(axis=0)) ** 2).sum(-1).mean(0))
    return e, f


def _full(report: dict[str, Any], args: Any, base: Any, val: list, tests: dict[str, list]) -> list[Path]:
    """The full-model committee of ``benchmarks/committee_members.py`` (when its members exist)."""
    from equiformer_calc.checkpoint import load_checkpoint
    from equiformer_calc.predictor import Predictor

    member_files = sorted((CKPT / f"{args.checkpoint}-committee").glob("member*.safetensors"))
    if not member_files:
        return member_files
    full = [Predictor(load_checkpoint(p)) for p in member_files]
    ve, vf = _full_predictions(full, val)
    owner = np.concatenate([[k] * len(f) for k, f in enumerate(val)])
    th_full = {"e": float(np.quantile(ve, 0.9)), "f": float(np.quantile(vf, 0.9)),
               "fmean": float(np.quantile(np.bincount(owner, weights=vf) / np.bincount(owner), 0.9))}
    sha = base.model.checkpoint.sha256 if base.model.checkpoint is not None else None
    report["full"] = {"members": len(full), "thresholds": th_full, "checkpoint_sha256": sha}
    for name, frames in tests.items():
        preds = base.predict(frames)
        e, f = _full_predictions(full, frames)
        report["full"][name] = _evaluate(frames, preds, e, f, th_full)
        log.info("full %s: %s", name, json.dumps(report["full"][name]))
    return member_files


def _time_calls(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="pbe-distilled-small")
    ap.add_argument("--fit-frames", type=int, default=0, help="training frames to fit on (0: all)")
    ap.add_argument("--fit-file", default="train.extxyz.xz", help="frames to fit the heads on (in the data folder)")
    ap.add_argument("--val-frames", type=int, default=0, help="0: all")
    ap.add_argument("--eval-frames", type=int, default=0, help="per test set (0: all)")
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--perturb", default="0,0.5,1.0", help="comma-separated first-layer perturbations to choose from")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--write", action="store_true", help="save the chosen head committee next to the checkpoint")
    ap.add_argument("--full-only", action="store_true", help="only the full-model committee (and its cost)")
    ap.add_argument("--skip-full", action="store_true", help="not the full-model committee (its numbers stand)")
    ap.add_argument("--k", type=int, default=10, help="neighbours of the energy-error model")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "uncertainty.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import torch
    from ase.build import fcc111, molecule, add_adsorbate

    from equiformer_calc.checkpoint import load_checkpoint, resolve_checkpoint
    from equiformer_calc.committee import add_error_model, committee_path, fit_head_committee, trunk_features
    from equiformer_calc.predictor import Predictor

    torch.set_num_threads(1)
    data = CKPT / f"{args.checkpoint}-data"
    model = load_checkpoint(args.checkpoint)
    t0 = time.perf_counter()
    train = [] if args.full_only else _subsample(data / args.fit_file, args.fit_frames, seed=0)
    val = _subsample(data / "val.extxyz.xz", args.val_frames, seed=0)
    tests = {name: _subsample(data / f"{name}.extxyz.xz", args.eval_frames, seed=0)
             for name in ("test_id", "test_ood")}
    log.info("read %d fit / %d val / %s test frames in %.0f s", len(train), len(val),
             {k: len(v) for k, v in tests.items()}, time.perf_counter() - t0)
    base = Predictor(model)
    sha = model.checkpoint.sha256 if model.checkpoint is not None else None
    report: dict[str, Any] = {"checkpoint": args.checkpoint, "checkpoint_sha256": sha, "fit_frames": len(train),
                              "val_frames": len(val),
                              "eval_frames": {k: len(v) for k, v in tests.items()}, "members": args.members}
    if args.full_only:
        _full(report, args, base, val, tests)
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(json.dumps(report, indent=1))
        return
    t0 = time.perf_counter()
    feats = trunk_features(model, train, progress=True)
    energies = [f.get_potential_energy() for f in train]
    fit_s = time.perf_counter() - t0
    val_base = base.predict(val)
    val_err = _errors(val, val_base)
    val_ads = np.array([f.info.get("config_type") == "adsorbate" for f in val])
    n_val = np.array([len(f) for f in val], dtype=float)
    choice: dict[float, float] = {}
    committees = {}
    from scipy.stats import spearmanr

    for perturb in [float(x) for x in args.perturb.split(",")]:
        t0 = time.perf_counter()
        committee = fit_head_committee(model, None, energies, members=args.members, perturb=perturb, features=feats)
        fit_s_p = time.perf_counter() - t0
        p = Predictor(model)
        p.set_committee(committee, "energy")
        spread, _ = _head_spreads(p.predict(val), val)
        choice[perturb] = float(spearmanr((spread * n_val)[val_ads], val_err["e_frame"][val_ads]).statistic)
        committees[perturb] = committee
        log.info("perturb %.2f: val energy Spearman %.3f (ridge fit %.1f s)", perturb, choice[perturb], fit_s_p)
    best = max(choice, key=choice.get)
    heads_only = committees[best]
    t0 = time.perf_counter()
    committee = add_error_model(heads_only, model, feats, energies, k=args.k)
    error_fit_s = time.perf_counter() - t0
    owner = np.concatenate([[k] * len(f) for k, f in enumerate(val)])
    predictors = {}
    no_novelty = dataclasses.replace(committee, error_model=dataclasses.replace(committee.error_model, scale=0.0))
    variants = (("heads", heads_only, "forces"), ("heads+error", committee, "forces"),
                ("heads+error_without_novelty", no_novelty, "energy"))
    val_frame_spearman: dict[str, float] = {}
    for name, com, mode in variants:
        pred = Predictor(model)
        pred.set_committee(com, mode)
        predictors[name] = pred
        se, sf = _head_spreads(pred.predict(val), val)
        val_frame_spearman[name] = float(spearmanr((se * n_val)[val_ads], val_err["e_frame"][val_ads]).statistic)
        thresholds = {"e": float(np.quantile(se, 0.9)), "e_frame": float(np.quantile((se * n_val)[val_ads], 0.9))}
        if sf is not None:
            thresholds.update(f=float(np.quantile(sf, 0.9)),
                              fmean=float(np.quantile(np.bincount(owner, weights=sf) / np.bincount(owner), 0.9)))
        report[name] = {"perturb": best, "val_spearman_by_perturb": choice, "thresholds": thresholds,
                        "trunk_features_s": fit_s, "val_adsorbate_frame_spearman": val_frame_spearman[name]}
        if name == "heads+error":
            report[name].update(error_fit_s=error_fit_s, k=args.k, reference_atoms=int(len(com.error_model.error)))
        for test, frames in tests.items():
            preds = pred.predict(frames)
            e, f = _head_spreads(preds, frames)
            report[name][test] = _evaluate(frames, preds, e, f, thresholds)
            log.info("%s %s: %s", name, test, json.dumps(report[name][test]))
    heads = predictors["heads+error"]
    # the committee that ships: the variant whose energy spread ranks the adsorbate frames' errors best on
    # the validation frames (never on the test frames), with its own thresholds (forces: the heads')
    chosen = max(val_frame_spearman, key=val_frame_spearman.get)
    th = report[chosen]["thresholds"]
    shipped = dataclasses.replace(
        dict((n, c) for n, c, _ in variants)[chosen],
        metadata={**heads_only.metadata, "threshold_energy_per_atom": th["e"],
                  "threshold_forces": report["heads"]["thresholds"]["f"], "threshold_adsorbate_energy": th["e_frame"],
                  "val_spearman_by_perturb": choice, "variant": chosen, "val_adsorbate_frame_spearman": val_frame_spearman})
    report["chosen"] = {"variant": chosen, "val_adsorbate_frame_spearman": val_frame_spearman}
    log.info("chosen on the validation frames: %s (%s)", chosen, val_frame_spearman)

    member_files = [] if args.skip_full else _full(report, args, base, val, tests)
    if args.skip_full and Path(args.out).exists():  # the earlier run's full-committee numbers stand, marked
        earlier = json.loads(Path(args.out).read_text()).get("full")
        if earlier:
            note = "not rerun (--skip-full): from an earlier run of this script"
            if earlier.get("checkpoint_sha256") != sha:  # members fine-tuned from other (earlier) weights
                note += f"; measured on other weights (sha256 {earlier.get('checkpoint_sha256') or 'not recorded'})"
            report["full"] = {**earlier, "note": note}

    # cost of one call on an adsorbate + slab
    slab = fcc111("Cu", (3, 3, 4), vacuum=7.0)
    add_adsorbate(slab, molecule("CO"), 1.9, "fcc")
    e_only = Predictor(model)
    e_only.set_committee(heads_only, "energy")
    e_err = Predictor(model)
    e_err.set_committee(committee, "energy")
    cost = {
        "atoms": len(slab),
        "base_s": _time_calls(lambda: base.predict([slab]), args.repeats),
        "heads_energy_s": _time_calls(lambda: e_only.predict([slab]), args.repeats),
        "heads_error_energy_s": _time_calls(lambda: e_err.predict([slab]), args.repeats),
        "heads_forces_s": _time_calls(lambda: heads.predict([slab]), args.repeats),
    }
    if member_files:
        cost["full_s"] = cost["base_s"] * len(member_files)  # M independent model calls
    report["cost"] = cost
    log.info("cost: %s", cost)
    if args.write:
        path = shipped.save(committee_path(resolve_checkpoint(args.checkpoint)))
        report["written"] = str(path.relative_to(ROOT / "equiformer_calc"))
        log.info("wrote %s", path)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
