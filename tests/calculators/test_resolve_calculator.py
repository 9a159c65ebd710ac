"""``calculators.local.resolve_calculator``: every kind of ``calculator=`` a workflow accepts, the
workflow's defaults applied only where it builds the settings itself, and a clear error for anything else."""

from __future__ import annotations

from pathlib import Path

import pytest
from ase.calculators.emt import EMT

from equiformer_calc import EquiformerCalculator, ModelSettings
from equiformer_calc.calculators.local import resolve_calculator
from equiformer_calc.checkpoint import DEFAULT_CHECKPOINT, CheckpointError
from equiformer_calc.integrations.d3 import D3, DispersionPredictor
from equiformer_calc.predictor import Predictor

from ..helpers import make_model, slab_with_adsorbate



def test_an_ase_calculator_is_used_as_is_and_defaults_do_not_touch_it():
    emt = EMT()
    assert resolve_calculator(emt, skin=1.0) is emt
    calc = EquiformerCalculator(model=make_model(6))
    assert resolve_calculator(calc, skin=1.0) is calc and calc.parameters["skin"] == 0.0


def test_an_object_with_a_calculators_methods_is_used_as_is():
    class Batched:  # e.g. the service's batcher-backed evaluator
        def predict(self, structures, properties=("energy",)):
            return [{"energy": 0.0} for _ in structures]

    duck = Batched()
    assert resolve_calculator(duck) is duck


def test_a_name_or_path_loads_that_checkpoint_with_the_defaults(checkpoint):
    for given in (str(checkpoint), Path(checkpoint)):
        calc = resolve_calculator(given, skin=1.0, dtype="float64")
        assert isinstance(calc, EquiformerCalculator)
        assert calc.parameters["checkpoint"] == str(checkpoint) and calc.parameters["skin"] == 1.0
        assert calc.parameters["dtype"] == "float64" and calc.neighbor_cache is not None


def test_none_is_the_default_shipped_checkpoint():
    calc = resolve_calculator(None)
    assert calc.parameters["checkpoint"] == DEFAULT_CHECKPOINT == calc.model.checkpoint.name


def test_settings_are_built_exactly_as_given(checkpoint):
    settings = ModelSettings(checkpoint=str(checkpoint), dtype="float64", memory="low", skin=0.0)
    calc = resolve_calculator(settings, skin=1.0)  # the workflow's default does not override the caller's choice
    assert calc.settings == settings.replace(checkpoint_sha256=calc.parameters["checkpoint_sha256"])
    assert calc.neighbor_cache is None


def test_a_predictor_is_shared_not_copied(model):
    predictor = Predictor(model, dtype="float64")
    calc = resolve_calculator(predictor, skin=1.0)
    assert calc.predictor is predictor and calc.parameters["skin"] == 1.0 and calc.parameters["dtype"] == "float64"
    atoms = slab_with_adsorbate()
    assert calc.get_potential_energy(atoms) == predictor.predict([atoms], ["energy"])[0]["energy"]
    # a predictor's own settings are its own: a workflow's dtype default does not relabel it
    assert resolve_calculator(predictor, dtype="float32").parameters["dtype"] == "float64"
    with pytest.raises(ValueError, match="dtype belong to the predictor given"):
        EquiformerCalculator.from_predictor(predictor, dtype="float32")


def test_a_dispersion_predictor_becomes_the_calculators_dispersion(model):
    predictor = Predictor(model, dtype="float64")
    wrapped = DispersionPredictor(predictor, D3("d3bj", xc="pbe"))
    calc = resolve_calculator(wrapped)
    assert calc.predictor is predictor and (calc.parameters["dispersion"], calc.parameters["xc"]) == ("d3bj", "pbe")
    atoms = slab_with_adsorbate()
    assert calc.get_potential_energy(atoms) == pytest.approx(wrapped.predict([atoms], ["energy"])[0]["energy"], abs=1e-10)


def test_a_model_is_copied_with_the_defaults(model):
    calc = resolve_calculator(model, dtype="float64")
    assert calc.model is not model and calc.parameters["dtype"] == "float64"
    assert next(model.parameters()).dtype != next(calc.model.parameters()).dtype  # the caller's module untouched


@pytest.mark.parametrize("given, message", [
    (5, "calculator must be an ASE calculator (or an object with its get_property, or a batched predict), a "
        "Predictor, a ModelSettings, an Equiformer model, a checkpoint name or path, or None (the default shipped "
        "checkpoint); got int 5"),
    ({"checkpoint": "emt-small"}, "got dict {'checkpoint': 'emt-small'}"),
])
def test_anything_else_is_a_type_error_naming_it(given, message):
    with pytest.raises(TypeError) as info:
        resolve_calculator(given)
    assert message in str(info.value)


def test_a_missing_checkpoint_file_is_named(tmp_path):
    missing = tmp_path / "no-such-model.safetensors"
    with pytest.raises(CheckpointError, match="no-such-model"):
        resolve_calculator(missing)
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64', got 'half'"):
        resolve_calculator("emt-small", dtype="half")  # a bad default is the settings' error
