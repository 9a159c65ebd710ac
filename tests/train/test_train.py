"""Tests of the training pipeline (``equiformer_calc.train``): trainer and evaluation (the
relaxation benchmark that uses the same trained checkpoint: tests/workflows/test_adsorbml.py).

One tiny EMT dataset (explicit datagen counts, a few seconds) is generated once per session and
one short ``tiny``-preset training run is shared by the tests that need a trained checkpoint.
Covered: per-element energy references recovered from synthetic data; the loss going down;
resuming after a kill (and after a stop at a smaller ``max_steps``) giving bitwise the same
weights, optimiser / EMA state and metrics as an uninterrupted run; atomic checkpoint writes;
the CSV / JSON / PNG outputs; DDP with two CPU processes (torchrun, gloo); the ``evaluate`` CLI
(metrics JSON + parity PNGs whose numbers equal a direct calculator computation). The dataset
and the training run are session fixtures of tests/conftest.py.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import add_adsorbate, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read

from equiformer_calc.calculators.local import EquiformerCalculator
from equiformer_calc.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from equiformer_calc.cli import main as cli_main
from equiformer_calc.model import Equiformer
from equiformer_calc.train import trainer
from equiformer_calc.train.data import read_samples, samples_from_atoms
from equiformer_calc.train.evaluate import compute_metrics, evaluate, predict_samples
from equiformer_calc.train.trainer import TrainConfig, fit_energy_references, train

from ..helpers import tiny_train_config as tiny_config  # (importing helpers also pins torch to one thread)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def no_learning_curve(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip the learning-curve PNG (~1 s per validation on a busy CPU; tested elsewhere)."""
    monkeypatch.setattr(trainer, "plot_learning_curve", lambda history, path: None)


def _no_temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name)


# ----------------------------------------------------------------------------- references
def test_fit_energy_references_recovers_synthetic_references() -> None:
    rng = np.random.default_rng(0)
    true = {"H": -1.1, "O": -4.3, "Cu": -3.2, "Pt": -5.5}
    frames = []
    for _ in range(14):
        counts = {s: int(rng.integers(0, 4)) for s in true}
        counts["Cu"] += 1
        symbols = [s for s, n in counts.items() for _ in range(n)]
        grid = np.array([(i, j, k) for i in range(3) for j in range(3) for k in range(3)], dtype=float)[: len(symbols)]
        atoms = Atoms(symbols, positions=2.2 * grid + rng.normal(0, 0.05, (len(symbols), 3)))
        energy = sum(true[s] for s in symbols)
        forces = rng.normal(0.0, 0.7, (len(atoms), 3))
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    samples = samples_from_atoms(frames, cutoff=3.0)
    elements = ["H", "C", "O", "Cu", "Pt"]
    refs, scale, shift = fit_energy_references(samples, elements)
    for k, symbol in enumerate(elements):
        assert refs[k] == pytest.approx(true.get(symbol, 0.0), abs=1e-9), symbol
    assert abs(shift) < 1e-9
    all_forces = np.concatenate([s.forces for s in samples])
    assert scale == pytest.approx(np.sqrt(np.mean(all_forces**2)))


# ----------------------------------------------------------------------------- training
def test_training_decreases_the_loss(trained: tuple[Path, dict[str, Any]], data_dir: Path) -> None:
    out, summary = trained
    history = json.loads((out / "history.json").read_text())
    assert summary["steps"] == 24 and [r["step"] for r in history] == [8, 16, 24]
    assert all(np.isfinite(r["train_loss"]) for r in history)

    def loss(m: dict[str, Any]) -> float:  # the trainer's model-selection loss
        return m["e_mae_atom"] / 0.003 + m["f_mae"] / 0.03

    assert summary["best_val_loss"] == pytest.approx(
        min(loss({"e_mae_atom": r["val_e_mae_atom"], "f_mae": r["val_f_mae"]}) for r in history)
    )
    # the training frames: the untrained model (built and initialised as train() does) vs the result
    cfg = tiny_config(data_dir, out)
    samples = read_samples(cfg.train, cfg.cutoff)
    torch.manual_seed(cfg.seed)
    initial = Equiformer.from_preset("tiny", elements=cfg.elements, cutoff=cfg.cutoff)
    refs, scale, shift = fit_energy_references(samples, cfg.elements, initial)
    with torch.no_grad():
        initial.atomic_energies.copy_(torch.from_numpy(refs))
        initial.scale.fill_(scale)
        initial.shift.fill_(shift)
    before = compute_metrics(predict_samples(initial, samples))
    after = compute_metrics(predict_samples(load_checkpoint(out / "last.safetensors"), samples))
    assert loss(after) < 0.7 * loss(before)
    assert after["f_mae"] < before["f_mae"] and after["e_mae_atom"] < before["e_mae_atom"]


def test_training_outputs(trained: tuple[Path, dict[str, Any]], data_dir: Path) -> None:
    out, summary = trained
    for name in ("best.safetensors", "last.safetensors", "state.pt", "history.json", "metrics.csv",
                 "summary.json", "learning_curve.png"):
        assert (out / name).is_file(), name
    assert _no_temp_files(out) == []
    assert (out / "learning_curve.png").read_bytes()[:8] == PNG_MAGIC
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [8, 16, 24]
    assert {"val_e_mae_atom", "val_f_mae", "val_s_mae", "train_loss", "lr", "grad_norm"} <= set(rows[0])
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["steps"] == 24 and on_disk["stop_reason"] == "max_steps"
    meta = read_metadata(out / "last.safetensors")
    assert meta["training"]["step"] == 24 and meta["training"]["config"]["preset"] == "tiny"
    assert meta["metrics"]["val_f_mae"] == float(rows[-1]["val_f_mae"])
    # the saved model is the EMA model evaluated at the last validation
    model = load_checkpoint(out / "last.safetensors")
    samples = read_samples(data_dir / "val.extxyz", model.cutoff)[:8]
    metrics = compute_metrics(predict_samples(model, samples, batch_size=16))
    assert metrics["f_mae"] == pytest.approx(float(rows[-1]["val_f_mae"]), rel=1e-5)
    assert metrics["e_mae_atom"] == pytest.approx(float(rows[-1]["val_e_mae_atom"]), rel=1e-5)


def _assert_same_tree(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tree(x, y, f"{where}[{k}]")
    else:
        assert a == b or (isinstance(a, float) and np.isnan(a) and np.isnan(b)), f"{where}: {a!r} != {b!r}"


def _without_wall(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def _assert_same_run(a: Path, b: Path) -> None:
    """Two finished runs agree bitwise in weights, optimiser / EMA / RNG / data-order state and
    metrics (wall times excepted)."""
    sa = torch.load(a / "state.pt", weights_only=True)
    sb = torch.load(b / "state.pt", weights_only=True)
    history_a, history_b = json.loads(sa.pop("history")), json.loads(sb.pop("history"))
    _assert_same_tree(sa, sb, "state")
    assert _without_wall(history_a) == _without_wall(history_b)
    assert _without_wall(json.loads((a / "history.json").read_text())) == _without_wall(history_b)
    from safetensors.torch import load_file

    for name in ("best.safetensors", "last.safetensors"):
        _assert_same_tree(load_file(str(a / name)), load_file(str(b / name)), name)
    summary_a = json.loads((a / "summary.json").read_text())
    summary_b = json.loads((b / "summary.json").read_text())
    for s in (summary_a, summary_b):
        s["last"].pop("wall_s")
    assert summary_a == summary_b


class _Killed(Exception):
    """Stands for the process dying."""


@pytest.mark.slow
@pytest.mark.usefixtures("no_learning_curve")
def test_resume_after_kill_is_bitwise_identical(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 6 training frames, batch 2: an epoch boundary (reshuffle) falls in the resumed part
    settings = dict(max_steps=5, max_train=6)
    straight = tmp_path / "straight"
    train(tiny_config(data_dir, straight, **settings))

    resumed = tmp_path / "resumed"
    original = trainer._atomic_torch_save

    def save_then_die(obj: Any, path: Path) -> None:
        original(obj, path)
        raise _Killed()  # the process dies right after its first resumable checkpoint (step 2)

    with monkeypatch.context() as patch, pytest.raises(_Killed):
        patch.setattr(trainer, "_atomic_torch_save", save_then_die)
        train(tiny_config(data_dir, resumed, **settings))
    assert torch.load(resumed / "state.pt", weights_only=True)["step"] == 2
    assert _no_temp_files(resumed) == []
    summary = train(tiny_config(data_dir, resumed, **settings))
    assert summary["steps"] == 5
    _assert_same_run(straight, resumed)


@pytest.mark.slow
@pytest.mark.usefixtures("no_learning_curve")
def test_resume_with_larger_max_steps_is_bitwise_identical(data_dir: Path, tmp_path: Path) -> None:
    # a constant learning rate after warm-up, so the schedule does not depend on max_steps
    settings = dict(max_train=6, min_lr_ratio=1.0)
    straight = tmp_path / "straight"
    train(tiny_config(data_dir, straight, max_steps=6, **settings))
    resumed = tmp_path / "resumed"
    first = train(tiny_config(data_dir, resumed, max_steps=2, **settings))
    assert first["steps"] == 2
    second = train(tiny_config(data_dir, resumed, max_steps=6, **settings))
    assert second["steps"] == 6
    _assert_same_run(straight, resumed)


@pytest.mark.usefixtures("no_learning_curve")
def test_wall_time_counts_each_session_once(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a fake clock that advances 1 s per reading: start, then one reading per validation row
    ticks = iter(range(1000))
    monkeypatch.setattr(trainer, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    out = tmp_path / "run"
    train(tiny_config(data_dir, out, max_train=4, max_steps=4, val_every=1))  # rows at 1 s .. 4 s
    ticks = iter(range(1000))
    train(tiny_config(data_dir, out, max_train=4, max_steps=6, val_every=1))  # 2 more rows: +1 s, +2 s
    walls = [row["wall_s"] for row in json.loads((out / "history.json").read_text())]
    assert walls == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_epoch_order_batches_stress_frames_only_with_each_other() -> None:
    rng = np.random.default_rng(0)
    stress_frames = rng.permutation(np.array([True] * 9 + [False] * 30))
    order = trainer._epoch_order(len(stress_frames), stress_frames, 4, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(len(stress_frames)))  # a permutation of the epoch
    full = [stress_frames[order[k : k + 4].numpy()] for k in range(0, 36, 4)]  # 2 + 7 full batches
    assert all(b.all() or not b.any() for b in full)
    assert sum(bool(b.all()) for b in full) == 2
    # without stress training (or without stress frames) the order is the plain permutation
    plain = torch.randperm(len(stress_frames), generator=torch.Generator().manual_seed(0))
    for mask in (None, np.zeros(len(stress_frames), dtype=bool)):
        assert torch.equal(trainer._epoch_order(len(stress_frames), mask, 4, torch.Generator().manual_seed(0)), plain)


@pytest.mark.usefixtures("no_learning_curve")
def test_stress_is_trained_when_bulk_frames_are_rare(tmp_path: Path) -> None:
    """2 bulk frames (with stress) among 16: the stress term needs a batch of 3D-periodic frames
    only, which random batches of 2 would form in 1 of 120 steps; the trainer must form one per epoch."""
    from ase.build import bulk

    rng = np.random.default_rng(1)
    frames = []
    for k in range(16):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) if k < 2 else fcc111("Cu", (2, 2, 2), vacuum=4.0)
        if k < 2:
            atoms.set_cell(atoms.cell.array * (1 + 0.02 * (2 * k - 1)), scale_atoms=True)
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        results = dict(energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        if k < 2:
            results["stress"] = atoms.get_stress()
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    frames = [frames[k] for k in rng.permutation(16)]
    from ase.io import write

    write(tmp_path / "train.extxyz", frames)
    out = tmp_path / "run"
    train(TrainConfig(train=str(tmp_path / "train.extxyz"), val=str(tmp_path / "train.extxyz"), out=str(out),
                      preset="tiny", elements=["Cu"], batch_size=2, max_steps=8, val_every=8, warmup_steps=1,
                      threads=1, max_val=4, seed=0))
    (row,) = json.loads((out / "history.json").read_text())
    assert np.isfinite(row["train_s_mae"])  # recorded only by a step whose loss had the stress term


def test_checkpoint_writes_are_atomic(tmp_path: Path, tiny_model, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    path = save_checkpoint(tiny_model, tmp_path / "model.safetensors", {"note": "first"})
    before = path.read_bytes()

    def torn_write(tensors: Any, filename: str, metadata: Any = None) -> None:
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", torn_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tiny_model, path, {"note": "second"})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    assert read_metadata(path)["note"] == "first"

    state = tmp_path / "state.pt"
    trainer._atomic_torch_save({"step": 1}, state)

    def torn_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError):
        trainer._atomic_torch_save({"step": 2}, state)
    monkeypatch.undo()
    assert torch.load(state, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "state.pt"]


@pytest.mark.slow
def test_ddp_two_cpu_processes(data_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"train: {data_dir / 'train.extxyz'}\nval: {data_dir / 'val.extxyz'}\nout: {tmp_path / 'ddp'}\n"
        "preset: tiny\nbatch_size: 2\nmax_steps: 4\nval_every: 2\nwarmup_steps: 1\nthreads: 1\nmax_val: 4\n"
        "time_limit_s: 1000\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
         "-m", "equiformer_calc.cli", "train", str(config)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "ddp"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["stop_reason"] == "max_steps"
    model = load_checkpoint(out / "best.safetensors")
    assert read_metadata(out / "best.safetensors")["training"]["step"] in (2, 4)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert _no_temp_files(out) == []
    # each step consumes a global batch of 2 ranks x 2 frames
    n_train, cursor = len(read(data_dir / "train.extxyz", ":")), 0
    for _ in range(4):
        cursor = (0 if cursor + 4 > n_train else cursor) + 4
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["step"] == 4 and state["cursor"] == cursor


# ----------------------------------------------------------------------------- evaluation
def test_evaluate_cli_matches_direct_computation(trained: tuple[Path, dict[str, Any]], data_dir: Path,
                                                 tmp_path: Path) -> None:
    ckpt = trained[0] / "best.safetensors"
    files = [data_dir / "test_id.extxyz", data_dir / "val.extxyz"]
    out = tmp_path / "eval"
    rc = cli_main(["evaluate", str(ckpt), *map(str, files), "--out", str(out), "--dtype", "float64",
                   "--by", "config_type,metal", "--no-progress"])
    assert rc == 0
    for name in ("metrics.json", "parity_energy.png", "parity_forces.png", "parity_stress.png"):
        assert (out / name).is_file(), name
    for name in ("parity_energy.png", "parity_forces.png", "parity_stress.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert _no_temp_files(out) == []
    result = json.loads((out / "metrics.json").read_text())

    # the same numbers, one structure at a time through the ASE calculator
    calc = EquiformerCalculator(checkpoint=str(ckpt), dtype="float64")
    frames = [a for f in files for a in read(f, ":")]
    e_err, e_err_atom, f_err, cos, s_err = [], [], [], [], []
    for atoms in frames:
        ref_e, ref_f = atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False)
        ref_s = atoms.get_stress() if atoms.pbc.all() else None
        free = ~atoms.arrays["fixed"].astype(bool)
        work = atoms.copy()
        work.calc = calc
        e, f = work.get_potential_energy(), work.get_forces(apply_constraint=False)
        e_err.append(e - ref_e)
        e_err_atom.append((e - ref_e) / len(atoms))
        f_err.append((f - ref_f)[free])
        norms = np.linalg.norm(f[free], axis=1) * np.linalg.norm(ref_f[free], axis=1)
        cos += list(np.sum(f[free] * ref_f[free], 1) / np.maximum(norms, 1e-8))  # 0 for a zero force
        if ref_s is not None:
            s_err.append(work.get_stress() - ref_s)
    overall = result["overall"]
    assert overall["n_frames"] == len(frames)
    assert overall["e_mae"] == pytest.approx(np.mean(np.abs(e_err)), rel=1e-8)
    assert overall["e_mae_atom"] == pytest.approx(np.mean(np.abs(e_err_atom)), rel=1e-8)
    assert overall["f_mae"] == pytest.approx(np.mean(np.abs(np.concatenate(f_err))), rel=1e-8)
    assert overall["n_free"] == sum(len(f) for f in f_err)
    assert overall["f_cos"] == pytest.approx(np.mean(cos), rel=1e-8)
    assert overall["n_stress"] == len(s_err) > 0
    assert overall["s_mae"] == pytest.approx(np.mean(np.abs(s_err)), rel=1e-8)
    # subsets partition the frames; the file group tells the inputs apart
    assert set(result["groups"]) == {"file", "config_type", "metal"}
    assert sum(m["n_frames"] for m in result["groups"]["config_type"].values()) == len(frames)
    assert {k: m["n_frames"] for k, m in result["groups"]["file"].items()} == {
        f.name: len(read(f, ":")) for f in files
    }
    # the Python API gives the same numbers as the CLI
    api = evaluate(ckpt, files, dtype="float64", by=("config_type", "metal"))
    assert api["overall"] == pytest.approx(overall, rel=1e-10)


def test_evaluate_excludes_fixed_atoms_from_force_metrics(tiny_model) -> None:
    slab = fcc111("Cu", (2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "O", 1.7, "fcc")
    slab.rattle(0.05, seed=1)
    fixed = slab.positions[:, 2] < slab.positions[:, 2].min() + 0.5
    slab.new_array("fixed", fixed)
    slab.calc = EMT()
    forces = slab.get_forces(apply_constraint=False)
    slab.calc = SinglePointCalculator(slab, energy=slab.get_potential_energy(), forces=forces)
    samples = samples_from_atoms([slab], cutoff=tiny_model.cutoff)
    pred = predict_samples(tiny_model, samples, dtype="float64")
    metrics = compute_metrics(pred)
    assert metrics["n_free"] == int((~fixed).sum())
    assert metrics["f_mae"] == pytest.approx(np.mean(np.abs(pred.forces[~fixed] - forces[~fixed])))
    assert "s_mae" not in metrics  # not 3D-periodic


def test_yaml_lists_of_train_and_val_files_are_concatenated(data_dir: Path, tmp_path: Path) -> None:
    """``train``/``val`` may list several files (e.g. adsorbate data plus extra bulk cells): paths are
    taken relative to the config, frames are read in order, and ``max_val`` caps each val file."""
    import shutil

    from equiformer_calc.data.readers import LabelKeys
    from equiformer_calc.train.trainer import _read_all

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(data_dir / "train.extxyz", tmp_path / "a" / "train.extxyz")
    shutil.copy(data_dir / "val.extxyz", tmp_path / "b" / "val.extxyz")
    config = tmp_path / "two.yaml"
    config.write_text("train: [a/train.extxyz, b/val.extxyz]\nval: [b/val.extxyz, a/train.extxyz]\nmax_val: 3\n")
    cfg = TrainConfig.from_yaml(config)
    assert cfg.train == [str(tmp_path / "a" / "train.extxyz"), str(tmp_path / "b" / "val.extxyz")]
    n_train, n_val = len(read(data_dir / "train.extxyz", ":")), len(read(data_dir / "val.extxyz", ":"))
    samples = _read_all(cfg.train, cfg.cutoff, LabelKeys(), progress=False)
    assert len(samples) == n_train + n_val
    first_val = read_samples(data_dir / "val.extxyz", cfg.cutoff)[0]
    assert samples[n_train].energy == first_val.energy and np.array_equal(samples[n_train].forces, first_val.forces)
    assert len(_read_all(cfg.val, cfg.cutoff, LabelKeys(), progress=False, limit=cfg.max_val)) == 6
    config.write_text("train: []\nval: v.xyz\n")
    with pytest.raises(ValueError, match="'train' must be a file path or a non-empty list"):
        TrainConfig.from_yaml(config)
