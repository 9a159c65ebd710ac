"""The shipped checkpoints ``checkpoints/<name>.safetensors`` (``emt-small``, ``pbe-distilled-small``).

These tests never skip: a missing checkpoint is a failure. ``EquiformerCalculator()`` with no arguments
loads the default one (``pbe-distilled-small``); each checkpoint's committed held-out test set
``checkpoints/<name>.testset.extxyz`` (``benchmarks/make_testset.py``) is intact; and its errors on it stay
within 5 % of the numbers stated in its model card ``checkpoints/<name>.card.json`` (``"testset":
{"e_mae_atom": ..., "f_mae": ...}``), which ``python benchmarks/card_metrics.py NAME`` reproduces.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from ase.io import read

from equiformer_calc.calculators.local import EquiformerCalculator
from equiformer_calc.checkpoint import DEFAULT_CHECKPOINT, available_checkpoints, read_metadata
from equiformer_calc.model import Equiformer

ROOT = Path(__file__).resolve().parent.parent
#: every checkpoint the package ships, with the labeller its test set was labelled by
SHIPPED = {"emt-small": "emt", "pbe-distilled-small": "sevennet:7net-0"}


def _files(name: str) -> tuple[Path, Path, Path]:
    """(checkpoint, card JSON, committed test set) of a shipped checkpoint."""
    base = ROOT / "checkpoints" / name
    return base.with_suffix(".safetensors"), base.with_suffix(".card.json"), base.with_suffix(".testset.extxyz")

#: measured metrics may exceed the card's by this factor (thread counts, BLAS, torch versions)
TOLERANCE = 1.05
#: card keys where lower is better; ``f_cos`` (higher is better) is checked as 1 - f_cos
LOWER_IS_BETTER = ("e_mae_atom", "e_rmse_atom", "e_mae", "e_rmse", "f_mae", "f_rmse", "s_mae", "s_rmse")



def _card_metrics_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("card_metrics", ROOT / "benchmarks" / "card_metrics.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=sorted(SHIPPED))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def measured(name: str) -> dict[str, Any]:
    """The card numbers of a shipped checkpoint, computed as ``benchmarks/card_metrics.py`` does."""
    checkpoint, _, testset = _files(name)
    return _card_metrics_module().card_metrics(checkpoint, testset)


def test_default_is_the_distilled_checkpoint() -> None:
    """The default has real (PBE-level) chemistry; EMT's model stays shipped under its own name."""
    assert DEFAULT_CHECKPOINT == "pbe-distilled-small"
    assert set(SHIPPED) <= set(available_checkpoints())


def test_testset_is_committed_and_intact(name: str) -> None:
    _, _, testset = _files(name)
    assert testset.is_file(), "run: python benchmarks/make_testset.py"
    assert testset.stat().st_size < 1_000_000
    frames = read(str(testset), ":")
    assert len(frames) == 60
    kinds = {a.info["config_type"] for a in frames}
    assert kinds == {"adsorbate", "slab", "bulk"}
    assert {a.info.get("labeller", "emt") for a in frames} == {SHIPPED[name]}
    for atoms in frames:
        assert np.isfinite(atoms.get_potential_energy())
        assert atoms.get_forces(apply_constraint=False).shape == (len(atoms), 3)
        assert "fixed" in atoms.arrays
        if atoms.info["config_type"] == "bulk":
            assert atoms.pbc.all() and atoms.get_stress().shape == (6,)
        else:
            assert atoms.arrays["fixed"].any()  # slabs keep their fixed bottom layers


def test_calculator_loads_the_shipped_checkpoint(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EQUIFORMER_CALC_CHECKPOINTS", raising=False)
    checkpoint, _, testset = _files(name)
    calc = EquiformerCalculator() if name == DEFAULT_CHECKPOINT else EquiformerCalculator(checkpoint=name)
    assert Path(calc.model.checkpoint.path).resolve() == checkpoint.resolve()
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert calc.todict()["checkpoint"] == name and calc.todict()["checkpoint_sha256"] == digest
    import yaml

    recipe = yaml.safe_load((ROOT / "checkpoints" / f"{name}.yaml").read_text())
    meta = read_metadata(checkpoint)
    config = meta["training"]["config"]
    assert config["preset"] == recipe["preset"] and meta["training"]["step"] > 0
    # the architecture is the committed recipe's, also for weights trained further from it (``init_from``:
    # the default's active-learning rounds inherit the architecture from the weights they start from)
    elements = recipe.get("elements", meta["config"]["elements"])
    built = Equiformer.from_preset(recipe["preset"], elements, cutoff=recipe["cutoff"], **recipe.get("model", {}))
    assert meta["config"] == json.loads(json.dumps(built.config.to_dict()))
    if not config.get("init_from"):  # trained from scratch: with the committed recipe
        assert config["model"] == recipe.get("model", {})
    atoms = read(str(testset), index=0)
    reference = atoms.get_potential_energy()
    atoms.calc = calc
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    assert np.isfinite(energy) and abs(energy - reference) / len(atoms) < 0.1
    assert forces.shape == (len(atoms), 3) and np.all(np.isfinite(forces))


def test_metrics_within_the_model_card(name: str, measured: dict[str, Any]) -> None:
    checkpoint, card_path, _ = _files(name)
    assert card_path.is_file(), (
        f"{card_path.relative_to(ROOT)} is missing: write the model card with the numbers printed by "
        "`python benchmarks/card_metrics.py`"
    )
    card = json.loads(card_path.read_text())
    stated = card.get("testset")
    assert isinstance(stated, dict) and stated, "the card has no 'testset' metrics"
    if "checkpoint_sha256" in card:
        assert card["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest(), (
            "the card describes another checkpoint file"
        )
    got = measured["testset"]
    checked = []
    for key, limit in stated.items():
        if key in LOWER_IS_BETTER:
            assert got[key] <= TOLERANCE * limit, f"{key}: {got[key]:.6g} > {TOLERANCE} x card {limit:.6g}"
        elif key == "f_cos":
            assert 1 - got[key] <= TOLERANCE * (1 - limit), f"f_cos: {got[key]:.6g} below card {limit:.6g}"
        elif key == "n_frames":
            assert got[key] == limit
        else:
            continue
        checked.append(key)
    assert {"e_mae_atom", "f_mae"} <= set(checked), f"the card must state e_mae_atom and f_mae (has {sorted(stated)})"


def test_calculator_agrees_with_the_evaluation(name: str, measured: dict[str, Any]) -> None:
    """The metrics come from the same numbers the calculator gives, one structure at a time."""
    from equiformer_calc.train.evaluate import evaluate

    checkpoint, _, testset = _files(name)
    _, pred = evaluate(checkpoint, testset, by=(), return_predictions=True)
    calc = EquiformerCalculator(checkpoint=name)
    frames = read(str(testset), ":")
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in frames])])
    for k in range(0, len(frames), 12):
        atoms = frames[k].copy()
        atoms.calc = calc
        assert atoms.get_potential_energy() == pytest.approx(pred.energy[k], abs=1e-3)
        np.testing.assert_allclose(
            atoms.get_forces(apply_constraint=False), pred.forces[offsets[k] : offsets[k + 1]], atol=1e-4
        )
    assert measured["testset"]["n_frames"] == len(frames)
