"""Fixtures of the command-line tests: a tiny checkpoint file and a working folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from equiformer_calc.checkpoint import save_checkpoint

from ..helpers import make_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A tiny model (tests/helpers.ELEMENTS) saved as a checkpoint file."""
    return str(save_checkpoint(make_model(0), tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"))


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty current folder (so that default output names land in it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
