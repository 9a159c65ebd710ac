"""The predictor's contract with the model it is given: it never changes it."""

from __future__ import annotations

import pytest
import torch

from equiformer_calc.predictor import Predictor

from .equivariance import assert_equivariant
from .helpers import bulk_cell, make_model


def test_predictor_never_changes_the_model_it_is_given():
    model = make_model(0).train()  # a model being trained: float32, train mode, parameters with gradients
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p64 = Predictor(model, dtype="float64")
    p32 = Predictor(model, dtype="float32")
    atoms = bulk_cell()
    r64, r32 = p64.predict([atoms])[0], p32.predict([atoms])[0]
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert next(model.parameters()).dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # each predictor owns its converted copy: building the second did not convert the first's
    assert next(p64.model.parameters()).dtype == torch.float64 and next(p32.model.parameters()).dtype == torch.float32
    assert not p64.model.training and not any(p.requires_grad for p in p64.model.parameters())
    assert r32["forces"].dtype == r64["forces"].dtype  # both returned as float64 arrays...
    assert abs(r32["energy"] - r64["energy"]) < 1e-3 * max(1.0, abs(r64["energy"]))  # ...of the same model
    assert r32["energy"] != r64["energy"]  # in two precisions


def test_a_model_handed_over_belongs_to_one_predictor():
    model = make_model(0)
    owner = Predictor(model, copy_model=False)
    assert owner.model is model and not model.training  # converted in place: it is the predictor's now
    with pytest.raises(ValueError, match="already handed to another Predictor"):
        Predictor(model, copy_model=False)
    assert Predictor(model).model is not model  # a copy is always allowed
    with pytest.raises(TypeError, match="needs an Equiformer model"):
        Predictor("emt-small")  # type: ignore[arg-type]


def test_predictor_is_equivariant(system):
    """Batched inference keeps the symmetries: energy invariant, forces and stress equivariant
    (float32, the default precision; the shared check of tests/equivariance.py)."""
    predictor = Predictor(make_model(0))
    props = ["energy", "forces"] + (["stress"] if system.pbc.all() else [])
    assert_equivariant(lambda atoms: predictor.predict([atoms], props)[0], system, seed=1)
