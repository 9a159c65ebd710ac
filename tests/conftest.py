"""Fixtures: tiny random-weight models and one structure of each kind."""

from __future__ import annotations

import pytest
from ase import Atoms
from hypothesis import settings


from equiformer_calc.model import Equiformer

from .helpers import SYSTEMS, make_model

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
