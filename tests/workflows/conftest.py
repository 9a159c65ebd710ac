"""Fixtures of the workflow tests: one tiny random-weight model (seed :data:`SEED`), its float64
calculator and a checkpoint of it."""

from __future__ import annotations

import pytest

from equiformer_calc import EquiformerCalculator
from equiformer_calc.checkpoint import save_checkpoint

from ..helpers import make_model
from .shared import SEED


@pytest.fixture(scope="session")
def model():
    return make_model(SEED)


@pytest.fixture(scope="session")
def calc64(model):
    return EquiformerCalculator(model=model, dtype="float64")


@pytest.fixture(scope="session")
def checkpoint(model, tmp_path_factory):
    return str(save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"))
