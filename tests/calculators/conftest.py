"""Fixtures of the calculator tests: one tiny random-weight model and a checkpoint file of it."""

from __future__ import annotations

import pytest

from equiformer_calc.checkpoint import save_checkpoint

from ..helpers import make_model


@pytest.fixture(scope="module")
def model():
    return make_model(5)


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")
