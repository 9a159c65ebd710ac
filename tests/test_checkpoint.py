"""Checkpoints: safetensors + JSON round trip, clear errors, no unpickling, named registry."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from ase.build import molecule
from safetensors.torch import save_file

from equiformer_calc.calculators.local import EquiformerCalculator
from equiformer_calc.checkpoint import (
    CheckpointError,
    available_checkpoints,
    load_checkpoint,
    read_metadata,
    resolve_checkpoint,
    save_checkpoint,
)

from .helpers import make_model


def test_roundtrip_same_numbers(tmp_path):
    model = make_model(0)
    path = save_checkpoint(model, tmp_path / "m.safetensors", {"training": {"steps": 3}})
    loaded = load_checkpoint(path)
    assert loaded.config == model.config
    assert read_metadata(path)["training"] == {"steps": 3}
    atoms = molecule("CH3OH")
    a = EquiformerCalculator(model=model, dtype="float64").predict([atoms])[0]
    b = EquiformerCalculator(checkpoint=str(path), dtype="float64").predict([atoms])[0]
    assert a["energy"] == b["energy"]
    np.testing.assert_array_equal(a["forces"], b["forces"])
    assert loaded.atomic_energies.dtype == torch.float64


def test_missing_and_unknown(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="unknown checkpoint 'nope'"):
        load_checkpoint("nope")


def test_corrupted_file(tmp_path):
    path = save_checkpoint(make_model(0), tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors|could not read"):
        load_checkpoint(path)
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_pickle_is_never_loaded(tmp_path):
    """A pickle renamed to .safetensors must be refused, and nothing it contains executed."""

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"state": Boom()}))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_wrong_format_and_version(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, other, metadata={"format": "something-else"})
    with pytest.raises(CheckpointError, match="not an equiformer-calc checkpoint"):
        load_checkpoint(other)
    future = tmp_path / "future.safetensors"
    save_file({"x": torch.zeros(2)}, future, metadata={"format": "equiformer-calc", "format_version": "99", "metadata": "{}"})
    with pytest.raises(CheckpointError, match="format version '99'"):
        load_checkpoint(future)


def test_mismatched_weights(tmp_path):
    path = save_checkpoint(make_model(0), tmp_path / "m.safetensors")
    meta = read_metadata(path)
    meta["config"]["irreps_node"] = "16x0e+4x1e+2x2e"
    from safetensors.torch import load_file

    tensors = load_file(path)
    save_file(tensors, tmp_path / "bad.safetensors",
              metadata={"format": "equiformer-calc", "format_version": "1", "metadata": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(tmp_path / "bad.safetensors")


def test_named_registry(tmp_path, monkeypatch):
    save_checkpoint(make_model(0), tmp_path / "my-model.safetensors")
    monkeypatch.setenv("EQUIFORMER_CALC_CHECKPOINTS", str(tmp_path))
    assert "my-model" in available_checkpoints()
    assert resolve_checkpoint("my-model") == tmp_path / "my-model.safetensors"
    calc = EquiformerCalculator(checkpoint="my-model")
    assert calc.model.elements == make_model(0).elements
