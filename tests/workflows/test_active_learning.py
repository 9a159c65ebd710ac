"""The active-learning loop shared by ``distil`` and ``specialize`` (workflows/active_learning.py), with EMT
as the teacher and tiny models:

* geometry and bookkeeping: minimum-image displacements of free atoms, the perturbed surfaces, the pool's
  held-out and excluded groups, the per-frame student-teacher errors against a direct EMT evaluation;
* one real round end to end (exploration, prefilter, EMT labels, selection, training by the real trainer):
  labels equal EMT's, selected frames are the worst above the threshold, the trained weights change;
* resumability: a SIGKILL in the middle of teacher labelling loses at most the call in flight (a rerun
  replays the journal and labels nothing twice), and a run stopped between phases continues where it stopped;
* ``specialize`` writes a checkpoint whose card reports the held-out relaxed adsorption-energy MAE against
  EMT, and that MAE improves over the starting model's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import fcc111
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms

from equiformer_calc.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from equiformer_calc.model import Equiformer
from equiformer_calc.surfaces import build_slab, fixed_mask
from equiformer_calc.workflows.active_learning import (
    ALConfig,
    _perturb_slab,
    frame_errors,
    max_displacement,
    plan_pool,
    read_frames,
    run_active_learning,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained model over H, O, Cu (EMT covers them), cutoff 4 A."""
    torch.manual_seed(0)
    model = Equiformer.from_preset("tiny", elements=["H", "O", "Cu"], cutoff=4.0)
    path = tmp_path_factory.mktemp("al") / "tiny.safetensors"
    save_checkpoint(model, path, {"name": "tiny"})
    return path


def _tiny_cfg(out: Path, init: Path, **kw) -> ALConfig:
    settings = dict(
        out=str(out), init=str(init), teacher="emt", explore_systems=5, relax_segments=(3, 6), md_systems=1,
        md_steps=4, md_frames=2, teacher_calls=16, teacher_relax_systems=1, teacher_relax_steps=2, train_steps=6,
        lr=1e-3, warmup_steps=2, val_fraction=0.0, train_overrides={"batch_size": 2, "val_every": 3},
    )
    settings.update(kw)
    return ALConfig(**settings)


def _train(config: dict) -> dict:
    from equiformer_calc.cli.distil import train_fn

    return train_fn(config)


# ------------------------------------------------------------------------------------------ unit
def test_max_displacement_minimum_image_and_free_atoms_only() -> None:
    a = fcc111("Cu", (2, 2, 3), vacuum=5.0)
    a.set_constraint(FixAtoms(indices=[0, 1, 2, 3]))
    b = a.copy()
    b.positions[0] += (0.0, 0.0, 2.0)  # a fixed atom: does not count
    b.positions[8] += a.cell[0] - (0.1, 0.0, 0.0)  # a free atom across the periodic boundary: 0.1 A
    b.positions[9] += (0.0, 0.3, 0.0)
    assert max_displacement(a, b) == pytest.approx(0.3)
    assert max_displacement(a, b, free_only=False) == pytest.approx(2.0)
    b.arrays["fixed"] = np.zeros(len(b), dtype=bool)  # the per-atom array wins over FixAtoms (dataset frames)
    a.arrays["fixed"] = np.zeros(len(a), dtype=bool)
    assert max_displacement(a, b) == pytest.approx(2.0)


def test_perturbed_surfaces() -> None:
    rng = np.random.default_rng(0)
    slab = build_slab("Cu", "fcc111", (3, 3, 4), a=3.6)
    n, n_fixed = len(slab), int(fixed_mask(slab).sum())
    vac = _perturb_slab(slab, "vacancy", rng, "Cu")
    assert len(vac) == n - 1 and int(fixed_mask(vac).sum()) == n_fixed  # a free top-layer atom removed
    ad = _perturb_slab(slab, "adatom", rng, "Cu")
    assert len(ad) == n + 1 and ad.get_tags()[-1] == 1
    nearest = np.min(ad.get_distances(n, list(range(n)), mic=True))
    assert nearest == pytest.approx(3.6 / np.sqrt(2), abs=1e-6)  # placed at the nearest-neighbour distance
    disp = _perturb_slab(slab, "displaced", rng, "Cu")
    moved = np.linalg.norm(disp.positions - slab.positions, axis=1)
    assert (moved > 0).sum() == 1 and 0.6 <= moved.max() <= 1.6 * np.sqrt(1 + (0.5 / 0.6) ** 2)
    assert not fixed_mask(slab)[int(np.argmax(moved))]


def test_pool_excludes_and_holds_out() -> None:
    pool = plan_pool(metals=["Cu", "Pt"], facets=["fcc111"], adsorbates=["O", "CO"],
                     exclude={("Cu", "fcc111", "O", "fcc")}, exclude_pairs={("Pt", "CO")}, heldout_per_group=1)
    keys = {(g.surface, g.adsorbate, g.site) for g in pool.groups}
    held = {(g.surface, g.adsorbate, g.site) for g in pool.heldout}
    assert ("Cu-fcc111", "O", "fcc") not in keys | held
    assert not any(s == "Pt-fcc111" and a == "CO" for s, a, _ in keys | held)
    assert not keys & held and len(held) == 3  # one site kind of each remaining (surface, adsorbate)
    with pytest.raises(ValueError, match="unknown adsorbate"):
        plan_pool(adsorbates=["XYZ"])


def test_frame_errors_against_emt() -> None:
    atoms = build_slab("Cu", "fcc111", (2, 2, 3), a=3.6)
    atoms.rattle(0.05, seed=1)
    atoms.calc = EMT()
    e, f = atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False)
    f_student = f + 0.1
    err = frame_errors(atoms, e + 0.12, f_student)
    assert err["de_atom"] == pytest.approx(0.12 / len(atoms))
    assert err["f_mae"] == pytest.approx(0.1)  # free atoms only; every component off by 0.1
    assert err["score"] == pytest.approx(0.01 / 0.005 + 0.1 / 0.04)


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_one_round_end_to_end(tmp_path: Path, tiny_ckpt: Path) -> None:
    pool = plan_pool(metals=["Cu"], facets=["fcc111"], adsorbates=["O", "H"])
    cfg = _tiny_cfg(tmp_path / "al", tiny_ckpt)
    campaign = run_active_learning(cfg, pool, _train, progress=False)
    rd = tmp_path / "al" / "round1"
    record = json.loads((rd / "round.json").read_text())
    assert list(record["phases"]) == ["explore", "label", "select", "train"]
    label = record["phases"]["label"]
    assert label["n_to_teacher"] <= cfg.teacher_calls
    labelled = read_frames(rd / "labelled.extxyz.xz")
    assert len(labelled) == label["n_labelled"] > 0
    for frame in labelled[:: max(1, len(labelled) // 5)]:  # labels are EMT's (at the file's 8-decimal positions)
        work = frame.copy()
        work.calc = EMT()
        assert frame.get_potential_energy() == pytest.approx(work.get_potential_energy(), abs=1e-5)
        np.testing.assert_allclose(frame.get_forces(apply_constraint=False), work.get_forces(apply_constraint=False),
                                   atol=1e-4)
        err = frame_errors(frame, frame.info["student_energy"], frame.arrays["student_forces"])
        assert err["score"] == pytest.approx(frame.info["score"], rel=1e-6)
    selected = read_frames(rd / "frames.extxyz.xz")
    scores = [f.info["score"] for f in selected]
    assert selected and min(scores) > cfg.min_score and scores == sorted(scores, reverse=True)
    assert record["phases"]["train"]["summary"]["steps"] == cfg.train_steps
    assert str(rd / "frames.extxyz.xz") in record["phases"]["train"]["train_files"]
    trained, start = load_checkpoint(rd / "best.safetensors"), load_checkpoint(tiny_ckpt)
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), start.state_dict().values()))
    assert campaign["final_checkpoint"] == str(rd / "best.safetensors")
    assert read_metadata(rd / "best.safetensors")["training"]["config"]["init_from"] == str(tiny_ckpt)

    # a second round: a finished round is skipped (``stop_after`` is about the next one), the new round starts
    # from the previous round's best weights and some of its starts are the previous student minima
    import dataclasses

    run_active_learning(dataclasses.replace(cfg, rounds=2), pool, _train, progress=False, stop_after="explore")
    assert list(json.loads((rd / "round.json").read_text())["phases"]) == ["explore", "label", "select", "train"]
    assert list(json.loads((tmp_path / "al" / "round2" / "round.json").read_text())["phases"]) == ["explore"]
    starts = read_frames(tmp_path / "al" / "round2" / "starts.extxyz.xz")
    assert any(a.info["perturbation"] == "student_minimum" for a in starts)


def _distil(out: Path, init: Path, log: Path, *extra: str, kill_at: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "EQC_TEST_CALL_LOG": str(log), "EQC_TEST_KILL_AT": str(kill_at), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "equiformer_calc.cli", "distil", "--out", str(out), "--init", str(init),
           "--teacher", "tests.helpers:counting_emt", "--base-data", "none", "--metals", "Cu", "--facets", "fcc111",
           "--adsorbates", "O", "--explore-systems", "4", "--md-systems", "1", "--teacher-calls", "12",
           "--teacher-relax-systems", "1", "--train-steps", "4", "--train-option", "batch_size=2",
           "--train-option", "val_every=2", "--no-progress", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_resume_after_sigkill_in_labelling_and_between_phases(tmp_path: Path, tiny_ckpt: Path) -> None:
    out, log = tmp_path / "al", tmp_path / "calls.log"
    killed = _distil(out, tiny_ckpt, log, "--stop-after", "label", kill_at=7)
    assert killed.returncode == -9, killed.stderr[-2000:]
    record = json.loads((out / "round1" / "round.json").read_text())
    assert list(record["phases"]) == ["explore"]  # killed inside labelling: exploration was kept
    journal = out / "round1" / "teacher_journal.jsonl"
    assert sum(1 for _ in journal.open()) == 6  # the 7th call was in flight

    done = _distil(out, tiny_ckpt, log, "--stop-after", "label")  # rerun: continues, stops between phases
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((out / "round1" / "round.json").read_text())
    assert list(record["phases"]) == ["explore", "label"]
    label = record["phases"]["label"]
    unique = sum(1 for _ in journal.open())
    assert unique == label["teacher_calls"] + 6  # this run paid only for calls the killed run had not made
    assert sum(1 for _ in log.open()) == unique + 1  # every label computed once, plus the one killed in flight

    final = _distil(out, tiny_ckpt, log)  # the remaining phases; no teacher call is paid again
    assert final.returncode == 0, final.stderr[-2000:]
    record = json.loads((out / "round1" / "round.json").read_text())
    assert list(record["phases"]) == ["explore", "label", "select", "train"]
    assert sum(1 for _ in log.open()) == unique + 1
    assert "round 1:" in final.stdout and "training done at step 4" in final.stdout


@pytest.mark.slow
def test_specialize_improves_heldout_relaxations(tmp_path: Path, tiny_ckpt: Path) -> None:
    from equiformer_calc.cli import main

    out = tmp_path / "sp"
    argv = ["specialize", str(tiny_ckpt), "--reference", "emt", "--metals", "Cu", "--facets", "fcc111",
            "--adsorbates", "O", "H", "--heldout-sites", "2", "--out", str(out), "--rounds", "2",
            "--explore-systems", "8", "--md-systems", "2", "--teacher-calls", "40", "--teacher-relax-systems", "2",
            "--train-steps", "150", "--lr", "3e-3", "--warmup-steps", "10", "--name", "cu-special", "--no-progress"]
    assert main(argv) == 0
    path = out / "cu-special.safetensors"
    card = read_metadata(path)["card"]
    assert card == json.loads(path.with_suffix(".card.json").read_text())
    assert card["reference"] == "emt" and card["surfaces"] == ["Cu-fcc111"] and card["adsorbates"] == ["H", "O"]
    assert len(card["heldout_groups"]) == 4 and not set(card["heldout_groups"]) & set(card["explored_groups"])
    h = card["heldout_relaxation"]
    assert h["n_heldout"] == 4 and h["n_scored_after"] >= 3
    # the numbers the card states are the ones measured against EMT; the specialised model is closer to EMT
    assert h["mae_after_eV"] < h["mae_before_eV"], h
    assert "| after |" in path.with_suffix(".md").read_text()


def test_file_pool_from_a_users_slab(tmp_path: Path) -> None:
    from ase.build import fcc100
    from ase.io import read, write

    from equiformer_calc.workflows.active_learning import _starting_structures, file_pool

    path = tmp_path / "my_slab.traj"
    write(str(path), fcc100("Cu", (2, 2, 4), vacuum=6.0))  # no constraints: the bottom half gets fixed
    pool = file_pool([("my_slab", read(str(path)))], ["O"], heldout_per_group=1, seed=0)
    spec = pool.surfaces["my_slab"]
    assert fixed_mask(spec.slab).sum() == 8 and set(spec.site_kinds()) == {"ontop", "bridge", "hollow"}
    assert len(pool.heldout) == 1 and pool.heldout[0] not in pool.groups
    cfg = ALConfig(out=str(tmp_path), init="unused", explore_systems=6, clean_fraction=0.0)
    starts = _starting_structures(cfg, pool, 1, [])
    assert len(starts) == 6
    for atoms in starts:
        assert atoms.info["surface"] == "my_slab" and atoms.info["site"] != pool.heldout[0].site
        n_ads = int((atoms.get_tags() == 2).sum())
        assert n_ads == 1 and atoms.get_chemical_symbols()[-1] == "O"
        assert np.array_equal(atoms.arrays["fixed"], fixed_mask(atoms))
        # the adsorbate sits above the surface at a bonding distance from its nearest metal atom
        d = atoms.get_distances(len(atoms) - 1, list(range(len(atoms) - 1)), mic=True).min()
        assert 1.0 < d < 3.5
