"""Labellers (``equiformer_calc.data.labellers``) and labelling that survives ``kill -9``.

* ``resolve_labeller`` takes ``emt``, ``sevennet[:MODEL]`` and ``module:factory`` and names what is
  wrong with anything else;
* a labeller that lacks an element of the requested domain is refused before anything is written;
* every frame records the labeller's name and version;
* a datagen run SIGKILLed in the middle of a system and rerun gives byte-identical files to an
  uninterrupted run, and pays for no label twice (only the call in flight at the kill is repeated);
* the SevenNet teacher (``[teacher]`` extra) gives the same labels through the labeller as called
  directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import fcc111, molecule
from ase.io import read

from equiformer_calc.data.labellers import LabelJournal, LabellerError, LabelStats, JournaledCalculator, resolve_labeller
from equiformer_calc.data.generate import generate_dataset
from equiformer_calc.data.plan import SPLITS

from ..helpers import TINY_DATASET

REPO = Path(__file__).resolve().parents[2]
FACTORY = "tests.helpers:counting_emt"
#: TINY_DATASET plus gas molecules (EMT has H, C, N, O)
SPEC = dict(TINY_DATASET, gas_molecules=["H2", "CO"], gas_replicas=3,
            gas_frames={"relax": 2, "rattle": 2, "md": 1, "md_stride": 2})


def test_resolve_names_and_errors() -> None:
    emt = resolve_labeller("emt")
    assert emt.name == "emt" and emt.version.startswith("ase ")
    custom = resolve_labeller(FACTORY)
    assert custom.name == FACTORY and "counting_emt" in custom.version
    with pytest.raises(LabellerError, match="unknown labeller 'dft'"):
        resolve_labeller("dft")
    with pytest.raises(LabellerError, match="cannot import module 'no_such_module'"):
        resolve_labeller("no_such_module:factory")
    with pytest.raises(LabellerError, match="is not a callable"):
        resolve_labeller("tests.helpers:TINY_DATASET")


def test_unsupported_element_refused_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "never"
    with pytest.raises(LabellerError, match=r"does not support element\(s\) \['Ir', 'Rh'\]"):
        generate_dataset(out, size=dict(SPEC, metals=["Cu", "Rh", "Ir"]), labeller="emt", progress=False)
    assert not out.exists()


def test_journal_replays_exact_labels(tmp_path: Path) -> None:
    labeller = resolve_labeller("emt")
    atoms = fcc111("Cu", (2, 2, 3), vacuum=5.0)
    atoms.rattle(0.05, seed=1)
    stats = LabelStats()
    atoms.calc = JournaledCalculator(labeller, stats, LabelJournal(tmp_path / "j.jsonl"))
    e1, f1 = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc.journal.close()
    with (tmp_path / "j.jsonl").open("a") as fh:
        fh.write('{"k": "torn')  # a write cut short by a kill
    again = atoms.copy()
    stats2 = LabelStats()
    again.calc = JournaledCalculator(labeller, stats2, LabelJournal(tmp_path / "j.jsonl"))
    assert again.get_potential_energy() == e1 and np.array_equal(again.get_forces(), f1)
    assert (stats.calls, stats2.calls, stats2.replayed) == (1, 0, 1)


def _datagen(out: Path, log: Path, kill_at: int = 0) -> subprocess.CompletedProcess:
    code = (
        "from equiformer_calc.data.generate import generate_dataset\n"
        f"generate_dataset({str(out)!r}, seed=5, size={SPEC!r}, labeller={FACTORY!r}, workers=1, progress=False)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), EQC_TEST_CALL_LOG=str(log), EQC_TEST_KILL_AT=str(kill_at))
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _calls(log: Path) -> int:
    return sum(1 for _ in log.open()) if log.exists() else 0


@pytest.mark.slow
def test_kill_9_resume_is_exact_and_labels_nothing_twice(tmp_path: Path) -> None:
    clean = _datagen(tmp_path / "clean", tmp_path / "clean.log")
    assert clean.returncode == 0, clean.stderr[-2000:]
    total = _calls(tmp_path / "clean.log")

    out, log = tmp_path / "killed", tmp_path / "killed.log"
    killed = _datagen(out, log, kill_at=total // 2)
    assert killed.returncode == -9, killed.stderr[-2000:]
    journals = list((out / ".datagen-work" / "journal").glob("*.jsonl"))
    assert journals, "the killed system's finished calls must be in a journal"
    first = _calls(log)
    resumed = _datagen(out, log)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # the call in flight at the kill is the only one paid for twice
    assert _calls(log) == total + 1, (first, _calls(log), total)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labeller"] == FACTORY
    for name in [f"{s}.extxyz" for s in SPLITS] + ["relax_initial.extxyz", "relax_relaxed.extxyz", "relax_tasks.json"]:
        assert (out / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name

    frames = [f for s in SPLITS for f in read(out / f"{s}.extxyz", ":")]
    assert all(f.info["labeller"] == FACTORY and "counting_emt" in f.info["labeller_version"] for f in frames)
    gas = [f for f in frames if f.info["config_type"] == "gas"]
    assert {f.info["adsorbate"] for f in gas} == {"H2", "CO"} and not any(f.pbc.any() for f in gas)
    assert {f.info["split"] for f in gas} >= {"train", "test_id"}


def test_compressed_output_reads_back(tmp_path: Path) -> None:
    summary = generate_dataset(tmp_path / "xz", seed=1, size=SPEC, labeller="emt", compress=True, progress=False)
    frames = read(tmp_path / "xz" / "train.extxyz.xz", ":")
    assert len(frames) == summary["frames_per_split"]["train"] > 0
    assert np.isfinite(frames[0].get_potential_energy())


def test_sevennet_teacher_labels_match_direct_calls() -> None:
    pytest.importorskip("sevenn", reason="the [teacher] extra is not installed (CI installs it)")
    from sevenn.calculator import SevenNetCalculator

    labeller = resolve_labeller("sevennet")
    assert labeller.name == "sevennet:7net-0" and labeller.version.startswith("sevenn ")
    atoms = molecule("CO")
    atoms.center(vacuum=5.0)
    atoms.calc = JournaledCalculator(labeller, LabelStats())
    direct = atoms.copy()
    direct.calc = SevenNetCalculator("7net-0", device="cpu")
    assert atoms.get_potential_energy() == pytest.approx(direct.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(atoms.get_forces(), direct.get_forces(), atol=1e-6)
