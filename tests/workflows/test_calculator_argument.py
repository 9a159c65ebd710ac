"""The workflows' one model argument, ``calculator``: a calculator, a Predictor, a ModelSettings or a
checkpoint path give the same numbers (tiny model, float64), and MD's skin default applies only
where it builds the calculator itself."""

from __future__ import annotations

import numpy as np
import pytest

from equiformer_calc import ModelSettings, relax, relax_batch, run_md
from equiformer_calc.predictor import Predictor
from equiformer_calc.workflows.md import MD_SKIN
from equiformer_calc.workflows.predict import predict_file

from .shared import small_slab


@pytest.fixture(scope="module")
def models(model, calc64, checkpoint):
    """The same float64 model given four ways."""
    return {
        "calculator": calc64,
        "predictor": Predictor(model, dtype="float64"),
        "settings": ModelSettings(checkpoint=checkpoint, dtype="float64"),
        "path": checkpoint,  # float32: compared separately
    }


def test_relax_gives_the_same_path_for_a_calculator_a_predictor_and_settings(models):
    runs = {k: relax(small_slab(), calculator=models[k], steps=6, fmax=0.01) for k in ("calculator", "predictor", "settings")}
    reference = runs["calculator"]
    for name, run in runs.items():
        assert run.nsteps == reference.nsteps, name
        np.testing.assert_allclose(run.energies, reference.energies, rtol=0, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(run.atoms.positions, reference.atoms.positions, rtol=0, atol=1e-12, err_msg=name)


def test_relax_batch_and_predict_take_every_kind(models):
    systems = [small_slab(seed=0), small_slab(seed=1)]
    energies = {k: [r.final_energy for r in relax_batch(systems, calculator=models[k], steps=4, progress=False)]
                for k in ("calculator", "predictor", "settings")}
    for name, values in energies.items():
        np.testing.assert_allclose(values, energies["calculator"], rtol=0, atol=1e-12, err_msg=name)
    predicted = {k: [a.get_potential_energy() for a in predict_file(systems, calculator=models[k]).structures]
                 for k in ("calculator", "predictor", "settings")}
    for name, values in predicted.items():
        np.testing.assert_allclose(values, predicted["calculator"], rtol=0, atol=1e-12, err_msg=name)
    # a path loads the same weights in float32 (the default): equal to float32 round-off
    as_path = [a.get_potential_energy() for a in predict_file(systems, calculator=models["path"]).structures]
    np.testing.assert_allclose(as_path, predicted["calculator"], rtol=0, atol=1e-4)


def test_md_skin_default_only_where_md_builds_the_calculator(checkpoint):
    kwargs = dict(ensemble="nve", temperature=300, timestep=1.0, steps=6, log_interval=2, progress=False)
    built_here = run_md(small_slab(), calculator=checkpoint, **kwargs)
    as_given = run_md(small_slab(), calculator=ModelSettings(checkpoint=checkpoint), **kwargs)  # skin 0: as given
    with_skin = run_md(small_slab(), calculator=ModelSettings(checkpoint=checkpoint, skin=MD_SKIN), **kwargs)
    assert built_here.neighbor_builds is not None and built_here.neighbor_builds < 7
    assert as_given.neighbor_builds is None  # no skin: a fresh search every step
    assert with_skin.neighbor_builds == built_here.neighbor_builds
    np.testing.assert_allclose(built_here.total, as_given.total, rtol=0, atol=1e-5)


def test_removed_keywords_are_type_errors(models):
    with pytest.raises(TypeError, match="device"):
        relax(small_slab(), calculator=models["calculator"], device="cpu")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="calculator must be"):
        relax(small_slab(), calculator=3.5)
