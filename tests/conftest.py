"""Fixtures: tiny random-weight models and one structure of each kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ase import Atoms
from hypothesis import settings


from equiformer_calc.model import Equiformer

from .helpers import SYSTEMS, TINY_DATASET, make_model, tiny_train_config

# property-based tests draw the same examples on every run: CI is deterministic, and a failure
# found once is found again
settings.register_profile("deterministic", derandomize=True, deadline=None)
settings.load_profile("deterministic")


@pytest.fixture(scope="session")
def tiny_model() -> Equiformer:
    return make_model(0)


@pytest.fixture(scope="session")
def tiny_model_se3() -> Equiformer:
    return make_model(1, parity=False)


@pytest.fixture(params=sorted(SYSTEMS))
def system(request) -> Atoms:
    return SYSTEMS[request.param]()


# one tiny EMT dataset and one short training run per session, shared by tests/train and
# tests/workflows/test_adsorbml.py
@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from equiformer_calc.data.generate import generate_dataset

    out = tmp_path_factory.mktemp("train-data") / "emt"
    generate_dataset(out, seed=3, size=TINY_DATASET, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One short training run (24 steps) shared by several tests: (out dir, summary)."""
    from equiformer_calc.train.trainer import train

    out = tmp_path_factory.mktemp("train-run") / "run"
    summary = train(tiny_train_config(data_dir, out, max_steps=24, val_every=8, batch_size=4, lr=5e-3,
                                      warmup_steps=2, max_val=8))
    return out, summary
