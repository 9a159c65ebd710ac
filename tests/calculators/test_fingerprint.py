"""The one model fingerprint (``calculators.base.model_fingerprint``): what it tells apart (weights,
precision, D3 term) and what it does not (two loads of the same weights); the screening database
and the distributed executor's model names both read it."""

from __future__ import annotations

import pytest
import torch

from equiformer_calc.calculators.base import model_fingerprint
from equiformer_calc.calculators.local import EquiformerCalculator
from equiformer_calc.distributed import model_key
from equiformer_calc.workflows.screening.store import model_fingerprint as store_fingerprint

from ..helpers import make_model


def test_same_weights_same_fingerprint_other_weights_other():
    a, b = EquiformerCalculator(model=make_model(0)), EquiformerCalculator(model=make_model(0))
    assert model_fingerprint(a) == model_fingerprint(b)
    other = make_model(0)
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-6
    assert model_fingerprint(EquiformerCalculator(model=other)) != model_fingerprint(a)
    assert model_fingerprint(a)["model"] == "in-memory model"


def test_precision_and_d3_are_part_of_the_identity():
    model = make_model(0)
    plain = EquiformerCalculator(model=model)
    assert model_fingerprint(plain) != model_fingerprint(EquiformerCalculator(model=model, dtype="float64"))
    pytest.importorskip("dftd3", reason="the [d3] extra (simple-dftd3) is not installed")
    with_d3 = EquiformerCalculator(model=model, dispersion="d3bj")
    # a screening database never mixes rows with and without D3, and the executor registers them apart
    assert model_fingerprint(plain) != model_fingerprint(with_d3)
    assert model_key(plain) != model_key(with_d3)


def test_one_definition_is_read_everywhere():
    calc = EquiformerCalculator(model=make_model(0))
    assert store_fingerprint is model_fingerprint
    assert model_key(calc) == model_key(EquiformerCalculator(model=make_model(0)))


def test_a_foreign_calculator_is_named_by_its_class():
    from ase.calculators.emt import EMT

    assert model_fingerprint(EMT()) == {"model": "EMT", "model_hash": "EMT"}
