"""Does the committee's uncertainty rank the real errors, and what does it cost? (issue 28)

Committees of one checkpoint (default ``pbe-distilled-small``), measured on held-out frames of its data
(``test_id``, ``test_ood``; all of them, or ``--eval-frames`` each drawn with seed 0). Every choice is made
on a **selection split of held-out systems**: the validation frames of the finished active-learning rounds
``--al-rounds`` (``checkpoints/pbe-distilled-al/roundN/val.extxyz.xz``: 5 % of each round's systems, never
trained on and checked here to share no ``system_id`` with the fit frames), never on the test frames. (The
base validation frames share their systems with the training frames, so an error model of neighbours'
residuals looks far better there than on new systems: 0.80 against 0.30 on test_id for version 4.)

* **heads**: readout heads on the frozen trunk (:func:`equiformer_calc.committee.fit_head_committee`),
  fitted in closed form on ``--fit-frames`` base training frames (0: all); the first-layer perturbation is
  chosen among ``--perturb`` by the per-frame energy Spearman on the selection split's adsorbate frames.
* **heads+error(k, p or |p|, novelty)**: the same heads with the energy-error model
  (:func:`equiformer_calc.committee.add_error_model`) fitted to the base training frames plus the rounds'
  frames (``roundN/frames.extxyz.xz``, teacher-labelled); ``p``: the neighbours' signed residuals (the
  earlier default, with its novelty term at factor 1 or 0), ``|p|``: their absolute residuals (the expected
  size of the error) with novelty factors ``--novelty``; each for every ``--k``.

With ``--write`` the candidate whose energy spread ranks the selection split's adsorbate frames' errors
best (per-frame Spearman, the target's measure) is saved next to the checkpoint (the shipped committee);
``chosen`` in the output says which, with every candidate's selection score. On the test frames the script
evaluates the heads, the earlier default method (``p``, k=10, novelty 1 and 0, fitted on the same frames)
and the chosen one (with the forces' uncertainty, the heads').
* **full**: the fine-tuned full models of ``benchmarks/committee_members.py``
  (``checkpoints/<name>-committee/member*.safetensors``), when they exist and without ``--skip-full``
  (with it, the earlier run's numbers are kept in the output, marked).

For each: Spearman between the uncertainty and the absolute error, for energy per frame (eV, on
adsorbate frames: what an adsorption energy needs) and per atom, and for forces (per atom: |F - F_ref|
against ``forces_uncertainty``), on all frames and on adsorbate frames; and the fraction of the 10 %
largest errors whose uncertainty is above the threshold (the 90th percentile of the uncertainty on the
selection frames, i.e. flagging ~10 % of them). Cost: one structure (Cu(111) 3x3x4 + CO, 38 atoms) per
call, median of ``--repeats`` calls, the model alone vs heads (energy) vs the shipped committee (energy /
energy and forces) vs the full committee (M model calls).

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


def _rounds(spec: str) -> list[int]:
    """"1-7" or "1,3,5" -> [1, ..., 7] / [1, 3, 5] (active-learning rounds whose files are finished)."""
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def _concat(parts: list) -> Any:
    """One :class:`~equiformer_calc.committee.TrunkFeatures` of several frame lists' features, in order."""
    from equiformer_calc.committee import TrunkFeatures

    offsets = np.cumsum([0] + [len(p.sizes) for p in parts[:-1]])
    return TrunkFeatures(
        features=np.concatenate([p.features for p in parts]), owner=np.concatenate([p.owner + o for p, o in zip(parts, offsets)]),
        species=np.concatenate([p.species for p in parts]), base=np.concatenate([p.base for p in parts]),
        energy=np.concatenate([p.energy for p in parts]), sizes=np.concatenate([p.sizes for p in parts]),
        digest="+".join(p.digest for p in parts))


def _variant_name(k: int, magnitude: bool, novelty: float) -> str:
    return f"heads+error(k={k},{'|p|' if magnitude else 'p'},novelty={novelty:g})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="pbe-distilled-small")
    ap.add_argument("--fit-frames", type=int, default=0, help="base training frames to fit on (0: all)")
    ap.add_argument("--fit-file", default="train.extxyz.xz", help="frames to fit the heads on (in the data folder)")
    ap.add_argument("--al-dir", default=str(CKPT / "pbe-distilled-al"), help="the active-learning campaign's folder")
    ap.add_argument("--al-rounds", default=None,
                    help="finished active-learning rounds: their frames join the error model's fit, their val frames "
                         "choose ('': none, then the base validation frames choose; default 1-8 for "
                         "pbe-distilled-small, the rounds its version 5 saw)")
    ap.add_argument("--eval-frames", type=int, default=0, help="per test set (0: all)")
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--perturb", default="0,0.5,1.0", help="comma-separated first-layer perturbations to choose from")
    ap.add_argument("--k", default="5,10", help="neighbours of the energy-error model to choose from")
    ap.add_argument("--novelty", default="0,0.5,1,2", help="novelty factors of the |p| error model to choose from")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--write", action="store_true", help="save the chosen committee next to the checkpoint")
    ap.add_argument("--full-only", action="store_true", help="only the full-model committee (and its cost)")
    ap.add_argument("--skip-full", action="store_true", help="not the full-model committee (its numbers stand)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "uncertainty.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import torch
    from ase.build import fcc111, molecule, add_adsorbate
    from scipy.stats import spearmanr

    from equiformer_calc.checkpoint import load_checkpoint, resolve_checkpoint
    from equiformer_calc.committee import add_error_model, committee_path, fit_head_committee, trunk_features
    from equiformer_calc.predictor import Predictor

    torch.set_num_threads(1)
    data = CKPT / f"{args.checkpoint}-data"
    model = load_checkpoint(args.checkpoint)
    t0 = time.perf_counter()
    if args.al_rounds is None:  # version 5 is round 8: its committee was chosen on rounds 1-8 (never a round in progress)
        args.al_rounds = "1-8" if args.checkpoint == "pbe-distilled-small" else ""
    rounds = _rounds(args.al_rounds) if args.al_rounds else []
    train = [] if args.full_only else _subsample(data / args.fit_file, args.fit_frames, seed=0)
    al = [f for r in rounds for f in _subsample(Path(args.al_dir) / f"round{r}" / "frames.extxyz.xz", 0)]
    if rounds:  # held-out systems: the rounds' validation frames (5 % of each round's systems)
        sel = [f for r in rounds for f in _subsample(Path(args.al_dir) / f"round{r}" / "val.extxyz.xz", 0)]
    else:  # no campaign: the base validation frames (they share systems with the training frames: biased)
        sel = _subsample(data / "val.extxyz.xz", 0)
    shared = {f.info.get("system_id") for f in sel} & {f.info.get("system_id") for f in train + al}
    if rounds and shared - {None}:
        raise SystemExit(f"the selection frames share systems with the fit frames: {sorted(shared)[:5]}")
    tests = {name: _subsample(data / f"{name}.extxyz.xz", args.eval_frames, seed=0)
             for name in ("test_id", "test_ood")}
    log.info("read %d base fit / %d active-learning fit / %d selection / %s test frames in %.0f s", len(train),
             len(al), len(sel), {k: len(v) for k, v in tests.items()}, time.perf_counter() - t0)
    base = Predictor(model)
    sha = model.checkpoint.sha256 if model.checkpoint is not None else None
    split = (f"the validation frames of active-learning rounds {args.al_rounds} (held-out systems)" if rounds
             else "the base validation frames (training systems)")
    report: dict[str, Any] = {"checkpoint": args.checkpoint, "checkpoint_sha256": sha, "fit_frames": len(train),
                              "al_rounds": rounds, "al_fit_frames": len(al), "selection_frames": len(sel),
                              "selection_split": split,
                              "eval_frames": {k: len(v) for k, v in tests.items()}, "members": args.members}
    if args.full_only:
        _full(report, args, base, sel, tests)
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(json.dumps(report, indent=1))
        return
    t0 = time.perf_counter()
    feats = trunk_features(model, train, progress=True)
    energies = [f.get_potential_energy() for f in train]
    fit_s = time.perf_counter() - t0
    err_feats = _concat([feats, trunk_features(model, al, progress=True)]) if al else feats
    err_energies = energies + [f.get_potential_energy() for f in al]
    report["trunk_features_s"] = time.perf_counter() - t0
    sel_base = base.predict(sel)
    sel_err = _errors(sel, sel_base)
    sel_ads = np.array([f.info.get("config_type") == "adsorbate" for f in sel])
    n_sel = np.array([len(f) for f in sel], dtype=float)

    def sel_score(com: Any) -> float:
        """Per-frame energy Spearman of ``com``'s spread on the selection adsorbate frames."""
        p = Predictor(model)
        p.set_committee(com, "energy")
        spread, _ = _head_spreads(p.predict(sel), sel)
        return float(spearmanr((spread * n_sel)[sel_ads], sel_err["e_frame"][sel_ads]).statistic)

    choice: dict[float, float] = {}
    committees = {}
    for perturb in [float(x) for x in args.perturb.split(",")]:
        committees[perturb] = fit_head_committee(model, None, energies, members=args.members, perturb=perturb,
                                                 features=feats)
        choice[perturb] = sel_score(committees[perturb])
        log.info("perturb %.2f: selection energy Spearman %.3f", perturb, choice[perturb])
    best = max(choice, key=choice.get)
    heads_only = committees[best]
    # the candidates: the heads alone; the signed error model (p) with and without its novelty term; the
    # error-size model (|p|) with a range of novelty factors; each for every k
    candidates: dict[str, Any] = {"heads": heads_only}
    t0 = time.perf_counter()
    for k in [int(x) for x in args.k.split(",")]:
        for novelty in (1.0, 0.0):
            candidates[_variant_name(k, False, novelty)] = add_error_model(heads_only, model, err_feats, err_energies,
                                                                           k=k, novelty=novelty)
        for novelty in [float(x) for x in args.novelty.split(",")]:
            candidates[_variant_name(k, True, novelty)] = add_error_model(heads_only, model, err_feats, err_energies,
                                                                          k=k, magnitude=True, novelty=novelty)
    error_fit_s = (time.perf_counter() - t0) / max(len(candidates) - 1, 1)
    sel_frame_spearman = {name: sel_score(com) for name, com in candidates.items()}
    for name, rho in sel_frame_spearman.items():
        log.info("%s: selection energy Spearman %.3f", name, rho)
    # the committee that ships: the candidate whose energy spread ranks the selection adsorbate frames'
    # errors best (per frame; never the test frames)
    chosen = max(sel_frame_spearman, key=sel_frame_spearman.get)
    report["chosen"] = {"variant": chosen, "selection_split": split, "selection_adsorbate_frames": int(sel_ads.sum()),
                        "selection_adsorbate_systems": len({f.info.get("system_id") for f, a in zip(sel, sel_ads) if a}),
                        "selection_adsorbate_frame_spearman": sel_frame_spearman}
    log.info("chosen on %s: %s", split, chosen)
    # evaluated on the test frames: the heads, the earlier default method (signed p, k=10, with and without
    # novelty; now fitted on the same frames) and the chosen one (forces' uncertainty: the heads', with it)
    evaluated = {"heads": "energy", _variant_name(10, False, 1.0): "energy", _variant_name(10, False, 0.0): "energy"}
    evaluated = {n: m for n, m in evaluated.items() if n in candidates}
    evaluated[chosen] = "forces"
    owner = np.concatenate([[k] * len(f) for k, f in enumerate(sel)])
    for name, mode in evaluated.items():
        com = candidates[name]
        pred = Predictor(model)
        pred.set_committee(com, mode)
        se, sf = _head_spreads(pred.predict(sel), sel)
        # thresholds: the 90th percentiles on the selection frames (flagging ~10 % of them)
        thresholds = {"e": float(np.quantile(se, 0.9)), "e_frame": float(np.quantile((se * n_sel)[sel_ads], 0.9))}
        if sf is not None:
            thresholds.update(f=float(np.quantile(sf, 0.9)),
                              fmean=float(np.quantile(np.bincount(owner, weights=sf) / np.bincount(owner), 0.9)))
        report[name] = {"perturb": best, "selection_spearman_by_perturb": choice, "thresholds": thresholds,
                        "selection_adsorbate_frame_spearman": sel_frame_spearman[name]}
        if com.error_model is not None:
            report[name].update(error_fit_s=error_fit_s, k=com.error_model.k, magnitude=com.error_model.magnitude,
                                novelty_factor=com.error_model.metadata.get("novelty_factor"),
                                reference_atoms=int(len(com.error_model.error)))
        for test, frames in tests.items():
            preds = pred.predict(frames)
            e, f = _head_spreads(preds, frames)
            report[name][test] = _evaluate(frames, preds, e, f, thresholds)
            log.info("%s %s: %s", name, test, json.dumps(report[name][test]))
    th = report[chosen]["thresholds"]
    shipped = dataclasses.replace(
        candidates[chosen],
        metadata={**heads_only.metadata, "threshold_energy_per_atom": th["e"], "threshold_forces": th["f"],
                  "threshold_adsorbate_energy": th["e_frame"], "selection_spearman_by_perturb": choice,
                  "variant": chosen, "selection_split": split, "al_rounds": rounds,
                  "selection_adsorbate_frame_spearman": sel_frame_spearman})
    report["trunk_features_base_s"] = fit_s

    member_files = [] if args.skip_full else _full(report, args, base, sel, tests)
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
    e_err.set_committee(shipped, "energy")
    f_err = Predictor(model)
    f_err.set_committee(shipped, "forces")
    cost = {
        "atoms": len(slab),
        "base_s": _time_calls(lambda: base.predict([slab]), args.repeats),
        "heads_energy_s": _time_calls(lambda: e_only.predict([slab]), args.repeats),
        "heads_error_energy_s": _time_calls(lambda: e_err.predict([slab]), args.repeats),
        "heads_forces_s": _time_calls(lambda: f_err.predict([slab]), args.repeats),
        "reference_atoms": int(len(shipped.error_model.error)) if shipped.error_model is not None else 0,
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
