"""``calculators.settings.ModelSettings``: validation (one error naming the field), variants, the JSON
round trip the service's worker uses, and that the calculator and predictor built from settings
are the ones built from keywords."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from equiformer_calc import EquiformerCalculator, ModelSettings
from equiformer_calc.checkpoint import CheckpointError
from equiformer_calc.predictor import Predictor
from equiformer_calc.runtime import DeviceUnavailableError

from ..helpers import slab_with_adsorbate



@pytest.mark.parametrize("field, value, error, message", [
    ("dtype", "float16", ValueError, "dtype must be 'float32' or 'float64', got 'float16'"),
    ("device", "gpu", DeviceUnavailableError, "'gpu' is not a torch device"),
    ("device", "tpu:0", DeviceUnavailableError, "'tpu:0' is not a torch device"),
    ("memory", "tiny", ValueError, "memory must be one of ('auto', 'fast', 'low'), got 'tiny'"),
    ("memory_budget", -5, ValueError, "memory_budget must be 'auto', None or a positive number of bytes, got -5"),
    ("memory_budget", "lots", ValueError, "memory_budget must be 'auto', None or a positive number of bytes"),
    ("max_edges", 0, ValueError, "max_edges must be positive or None, got 0"),
    ("max_atoms_per_batch", 0, ValueError, "max_atoms_per_batch must be >= 1, got 0"),
    ("max_atoms_per_batch", 2.5, ValueError, "max_atoms_per_batch must be an integer >= 1, got 2.5"),
    ("min_distance_ratio", -0.1, ValueError, "min_distance_ratio must be >= 0, got -0.1"),
    ("skin", -1.0, ValueError, "skin must be >= 0 Angstrom, got -1.0"),
    ("skin", float("nan"), ValueError, "skin must be a finite number >= 0 Angstrom, got nan"),
    ("threads", 4, ValueError, "threads must be 'auto' or None, got 4"),
    ("dispersion", "d4", ValueError, "unknown dispersion 'd4'; choose one of: none, d3bj"),
    ("xc", "", ValueError, "xc must be a functional's name"),
    ("uncertainty", "maybe", ValueError, "uncertainty must be one of ('off', 'energy', 'forces')"),
    ("checkpoint", 5, TypeError, "checkpoint must be a shipped name or a path (or None for the default), got 5"),
])
def test_a_bad_value_is_an_error_naming_the_field(field, value, error, message):
    with pytest.raises(error) as info:
        ModelSettings(**{field: value})
    assert message in str(info.value)
    with pytest.raises(error):  # a variant is validated the same way
        ModelSettings().replace(**{field: value})


def test_values_are_normalised_and_the_object_is_frozen(tmp_path):
    import torch

    s = ModelSettings(checkpoint=tmp_path / "x.safetensors", dtype=torch.float64, device=torch.device("cpu"),
                      memory_budget=2.0e9, skin=1)
    assert s.checkpoint == str(tmp_path / "x.safetensors") and s.dtype == "float64" and s.device == "cpu"
    assert s.memory_budget == 2_000_000_000 and isinstance(s.skin, float)
    with pytest.raises(Exception, match="cannot assign"):
        s.dtype = "float32"  # type: ignore[misc]
    with pytest.raises(TypeError, match="ModelSettings has no field.*'chekpoint'"):
        s.replace(chekpoint="x")


def test_json_round_trip_is_what_the_worker_receives(model):
    """The isolated worker gets the settings as JSON (``worker._spec_of``) and rebuilds the server's
    predictor from them: same settings, same numbers."""
    from safetensors.torch import load

    from equiformer_calc.model import Equiformer
    from equiformer_calc.service.worker import _spec_of

    settings = ModelSettings(dtype="float64", memory="low", memory_budget=3 << 30, max_edges=10**7,
                             max_atoms_per_batch=64, min_distance_ratio=0.2, uncertainty="off", skin=0.5)
    assert ModelSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    with pytest.raises(TypeError, match="no field.*'colour'"):
        ModelSettings.from_dict({**settings.to_dict(), "colour": "red"})

    local = settings.predictor(model)
    spec = pickle.loads(pickle.dumps(_spec_of(local, ModelSettings.of(local))))  # what crosses the pipe
    rebuilt_settings = ModelSettings.from_dict(json.loads(spec["settings"]))
    assert rebuilt_settings == ModelSettings.of(local)
    assert (rebuilt_settings.memory_budget, rebuilt_settings.max_edges, rebuilt_settings.memory) == (3 << 30, 10**7, "low")
    copy = Equiformer.from_config(spec["config"])
    copy.load_state_dict(load(spec["weights"]))
    rebuilt = rebuilt_settings.predictor(copy, copy_model=False)
    atoms = slab_with_adsorbate()
    a, b = (p.predict([atoms], ["energy", "forces"])[0] for p in (local, rebuilt))
    assert a["energy"] == b["energy"]
    np.testing.assert_array_equal(a["forces"], b["forces"])


def test_of_reads_a_predictor_and_a_dispersion_wrapper(model):
    from equiformer_calc.integrations.d3 import D3, DispersionPredictor

    local = Predictor(model, dtype="float64", memory="fast", max_atoms_per_batch=100, memory_budget=None)
    s = ModelSettings.of(local)
    assert (s.dtype, s.memory, s.max_atoms_per_batch, s.memory_budget, s.dispersion) == ("float64", "fast", 100, None, None)
    wrapped = ModelSettings.of(DispersionPredictor(local, D3("d3bj-atm", xc="rpbe")))
    assert (wrapped.dispersion, wrapped.xc) == ("d3bj-atm", "rpbe")
    with pytest.raises(TypeError, match="ModelSettings.of needs a Predictor.*got str"):
        ModelSettings.of("emt-small")


def test_calculator_keywords_and_settings_build_the_same_calculator(checkpoint):
    keywords = dict(checkpoint=checkpoint, dtype="float64", memory="low", skin=0.3, min_distance_ratio=0.2,
                    max_atoms_per_batch=512, uncertainty="off")
    by_keywords = EquiformerCalculator(**keywords)
    by_settings = EquiformerCalculator.from_settings(ModelSettings(**keywords))
    assert by_keywords.parameters == by_settings.parameters
    assert by_keywords.settings == by_settings.settings == ModelSettings(**keywords).replace(
        checkpoint_sha256=by_keywords.parameters["checkpoint_sha256"])
    atoms = slab_with_adsorbate()
    e = [c.get_potential_energy(atoms.copy()) for c in (by_keywords, by_settings)]
    assert e[0] == e[1]
    # settings beyond the ASE keywords reach the predictor, and survive pickling
    tight = EquiformerCalculator.from_settings(ModelSettings(checkpoint=checkpoint, memory_budget=1 << 30, max_edges=10**6))
    clone = pickle.loads(pickle.dumps(tight))
    assert (clone.predictor.memory_budget, clone.predictor.max_edges) == (1 << 30, 10**6)


def test_a_calculator_refuses_the_same_bad_values_through_set(checkpoint):
    calc = EquiformerCalculator(checkpoint=checkpoint)
    with pytest.raises(ValueError, match="memory must be one of"):
        calc.set(memory="tiny")
    with pytest.raises(ValueError, match="unknown dispersion 'd9'"):
        calc.set(dispersion="d9")
    assert calc.parameters["memory"] == "auto" and calc.parameters["dispersion"] is None


def test_checkpoint_sha256_and_missing_files_are_refused(checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="has sha256 .* not the checkpoint_sha256='0000'"):
        ModelSettings(checkpoint=checkpoint, checkpoint_sha256="0000").predictor()
    missing = tmp_path / "nothing-here.safetensors"
    with pytest.raises(CheckpointError, match="nothing-here"):
        ModelSettings(checkpoint=str(missing)).predictor()


def test_the_calculators_keyword_defaults_are_the_settings_defaults():
    """EquiformerCalculator keeps ASE-style keywords; their defaults (and ``default_parameters``) are
    ModelSettings', so the two cannot drift apart."""
    import inspect

    from equiformer_calc.calculators.settings import CALCULATOR_FIELDS

    signature = inspect.signature(EquiformerCalculator.__init__).parameters
    assert {name: signature[name].default for name in CALCULATOR_FIELDS} == ModelSettings.defaults(CALCULATOR_FIELDS)
    assert EquiformerCalculator.default_parameters == ModelSettings.defaults(CALCULATOR_FIELDS)
