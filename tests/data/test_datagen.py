"""Tests of the dataset generator (``equiformer_calc.data``: plan, label, generate) with EMT.

One tiny dataset (explicit counts, a few seconds) is generated once per session and checked for:
files that read back with ``ase.io.read``; energy/forces everywhere and stress on bulk frames
only; raw (unconstrained) forces on fixed atoms; per-atom ``fixed``/``tags`` consistent with the
FixAtoms constraint; splits disjoint by system; test_ood (metal, adsorbate) combinations and
relaxation-task site combinations absent from training; byte-identical output for the same seed
with a different worker count; a no-op rerun; and the CLI help.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read

from equiformer_calc.data import label, plan
from equiformer_calc.data.generate import generate_dataset
from equiformer_calc.data.plan import SPLITS
from equiformer_calc.surfaces import ADSORBATES, EMT_LATTICE_CONSTANTS

from ..helpers import TINY_DATASET

DATA_FILES = [f"{s}.extxyz" for s in SPLITS] + ["relax_initial.extxyz", "relax_relaxed.extxyz", "relax_tasks.json"]
INFO_KEYS = {"config_type", "metal", "facet", "adsorbate", "site", "frame_kind", "split", "system_id"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("emt") / "data"
    summary = generate_dataset(out, seed=3, size=TINY_DATASET, workers=1, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def frames(dataset: tuple[Path, dict]) -> dict[str, list[Atoms]]:
    out, _ = dataset
    return {s: read(out / f"{s}.extxyz", ":") for s in SPLITS}


def test_files_and_summary(dataset: tuple[Path, dict], frames: dict[str, list[Atoms]]) -> None:
    out, summary = dataset
    for name in DATA_FILES + ["summary.json"]:
        assert (out / name).is_file(), name
    assert not (out / ".datagen-work").exists()
    assert not list(out.glob("*.tmp*"))
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["seed"] == 3 and on_disk["generator_version"] == plan.GENERATOR_VERSION
    assert on_disk["frames_per_split"] == {s: len(frames[s]) for s in SPLITS}
    assert summary["frames_per_split"] == on_disk["frames_per_split"]
    for split in ("train", "test_id", "test_ood"):
        assert frames[split], f"empty {split}"
    assert on_disk["labeller_wall_seconds"] > 0 and on_disk["labeller"] == "emt"


def test_labels_read_back(frames: dict[str, list[Atoms]]) -> None:
    kinds = set()
    for split, items in frames.items():
        for atoms in items:
            assert INFO_KEYS <= set(atoms.info), atoms.info
            assert atoms.info["split"] == split
            kinds.add((atoms.info["config_type"], atoms.info["frame_kind"]))
            energy = atoms.get_potential_energy()
            forces = atoms.get_forces(apply_constraint=False)
            assert np.isfinite(energy)
            assert forces.shape == (len(atoms), 3) and np.all(np.isfinite(forces))
            assert np.linalg.norm(forces, axis=1).max() <= label.MAX_FORCE
            assert len(atoms) <= 45
            if atoms.info["config_type"] == "bulk":
                assert atoms.pbc.all()
                assert atoms.get_stress(apply_constraint=False).shape == (6,)
            else:
                assert list(atoms.pbc) == [True, True, False]
                assert "stress" not in atoms.calc.results
    assert {c for c, _ in kinds} == {"bulk", "slab", "adsorbate"}
    assert {k for _, k in kinds} == {"relax", "rattle", "md"}


def test_fixed_atoms_have_raw_forces(frames: dict[str, list[Atoms]]) -> None:
    slabs = [a for items in frames.values() for a in items if a.info["config_type"] != "bulk"]
    assert slabs
    for atoms in slabs:
        fixed = atoms.arrays["fixed"].astype(bool)
        (constraint,) = atoms.constraints  # FixAtoms survives the extxyz round trip
        assert sorted(constraint.index) == list(np.flatnonzero(fixed))
        assert 0 < fixed.sum() < len(atoms)
        tags = atoms.get_tags()
        assert np.all(tags[fixed] == 0) and np.all(tags[~fixed] > 0)
        if atoms.info["config_type"] == "adsorbate":
            assert (tags == 2).sum() == len(ADSORBATES[atoms.info["adsorbate"]][0])
        raw = atoms.get_forces(apply_constraint=False)
        assert np.abs(raw[fixed]).max() > 1e-3, "fixed atoms carry zeroed (constrained) forces"
    # labels are EMT's raw forces
    atoms = slabs[-1]
    ref = atoms.copy()
    ref.calc = EMT()
    assert ref.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), abs=1e-5)
    np.testing.assert_allclose(
        ref.get_forces(apply_constraint=False), atoms.get_forces(apply_constraint=False), atol=1e-5
    )


def test_splits_disjoint_and_ood_held_out(dataset: tuple[Path, dict], frames: dict[str, list[Atoms]]) -> None:
    out, summary = dataset
    ids = {s: {a.info["system_id"] for a in frames[s]} for s in SPLITS}
    seen = ids["train"] | ids["val"]
    assert not seen & ids["test_id"]
    assert not seen & ids["test_ood"]
    assert not ids["test_id"] & ids["test_ood"]
    ood = {tuple(c) for c in summary["test_ood_combos"]}
    assert len(ood) == plan.SIZES["medium"].ood_combos
    for split in ("train", "val", "test_id"):
        assert not {(a.info["metal"], a.info["adsorbate"]) for a in frames[split]} & ood
    assert {(a.info["metal"], a.info["adsorbate"]) for a in frames["test_ood"]} <= ood
    # relaxation references come from (metal, facet, adsorbate, site) groups never trained on
    tasks = json.loads((out / "relax_tasks.json").read_text())
    initial = read(out / "relax_initial.extxyz", ":")
    relaxed = read(out / "relax_relaxed.extxyz", ":")
    assert len(tasks) == len(initial) == len(relaxed) == TINY_DATASET["relax_tasks"]
    trained = {
        (a.info["metal"], a.info["facet"], a.info["adsorbate"], a.info["site"])
        for s in ("train", "val")
        for a in frames[s]
    }
    for task, start, end in zip(tasks, initial, relaxed, strict=True):
        assert (task["metal"], task["facet"], task["adsorbate"], task["site"]) not in trained
        assert task["split"] in ("test_id", "test_ood")
        assert end.get_potential_energy() == pytest.approx(task["relaxed_energy"])
        assert task["relaxed_energy"] <= task["initial_energy"] + 1e-8
        assert len(start) == len(end) == task["n_atoms"]


def test_same_seed_identical_any_worker_count(dataset: tuple[Path, dict], tmp_path: Path) -> None:
    out, summary = dataset
    again = generate_dataset(tmp_path / "again", seed=3, size=TINY_DATASET, workers=2, progress=False)
    for name in DATA_FILES:
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    assert again["files"] == summary["files"]


def test_rerun_is_noop(dataset: tuple[Path, dict]) -> None:
    out, summary = dataset
    stamps = {name: (out / name).stat().st_mtime_ns for name in DATA_FILES + ["summary.json"]}
    assert generate_dataset(out, seed=3, size=TINY_DATASET, progress=False) == json.loads((out / "summary.json").read_text())
    assert stamps == {name: (out / name).stat().st_mtime_ns for name in stamps}
    with pytest.raises(FileExistsError):
        generate_dataset(out, seed=4, size=TINY_DATASET, progress=False)


def test_plan_is_seeded() -> None:
    assert plan.choose_ood_combos(0, 6) == plan.choose_ood_combos(0, 6)
    assert plan.choose_ood_combos(0, 6) != plan.choose_ood_combos(1, 6)
    medium, _ = plan.plan_tasks(0, plan.SIZES["medium"])
    small, _ = plan.plan_tasks(0, plan.SIZES["small"])
    assert len(small) < len(medium)
    assert {t.split for t in small} == {"train", "test_id", "test_ood"}


def test_bulk_preset_plans_only_bulk_cells_with_held_out_ones() -> None:
    tasks, _ = plan.plan_tasks(1, plan.SIZES["bulk"])
    assert {t.kind for t in tasks} == {"bulk"}
    spec = plan.SIZES["bulk"]
    assert len(tasks) == len(spec.metals) * len(plan.BULK_CELLS) * spec.bulk_replicas
    assert {t.split for t in tasks} == {"train", "test_id"}


@pytest.mark.parametrize("metal", sorted(EMT_LATTICE_CONSTANTS))
def test_lattice_constants_are_emt_minima(metal: str) -> None:
    def energy(a: float) -> float:
        atoms = bulk(metal, "fcc", a=a)
        atoms.calc = EMT()
        return atoms.get_potential_energy()

    a0 = EMT_LATTICE_CONSTANTS[metal]
    assert energy(a0) < min(energy(a0 - 0.01), energy(a0 + 0.01))


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    from equiformer_calc.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["datagen", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--out", "--seed", "--size", "--workers"):
        assert flag in text
