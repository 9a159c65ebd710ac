"""Fixtures of the building-block tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def float64_default():
    """torch's default dtype float64 for one test: e3nn's assert_equivariant builds its rotation
    matrices in it, so that the tolerance can be float64 round-off."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)
