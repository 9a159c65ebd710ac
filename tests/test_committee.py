"""The committee of readout heads (``equiformer_calc.committee``): its spread is the spread of the members'
own energies, its forces' spread matches finite differences of the members' energies, it is invariant
under rigid motions, and a committee of other weights is refused or ignored as documented."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
from ase.build import add_adsorbate, fcc111, molecule
from ase.calculators.emt import EMT

from equiformer_calc import EquiformerCalculator
from equiformer_calc.checkpoint import load_checkpoint, save_checkpoint
from equiformer_calc.committee import CommitteeError, committee_path, fit_head_committee

from .helpers import make_model


def _frames(n: int = 16, adsorbates: tuple[str, ...] = ("O",), height: float = 1.5):
    """Cu(111) 2x2 with the ``adsorbates`` in turn (an atom or an ASE molecule name) at shifted heights and
    alternating sites, rattled, labelled by EMT."""
    out = []
    for k in range(n):
        atoms = fcc111("Cu", (2, 2, 2), vacuum=5.0)
        name = adsorbates[k % len(adsorbates)]
        add_adsorbate(atoms, name if len(name) == 1 else molecule(name), height + 0.05 * (k % 4),
                      "fcc" if k % 2 else "hcp")
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        out.append(atoms)
    return out


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A checkpoint file with its committee next to it (8 heads fitted on EMT frames)."""
    path = save_checkpoint(make_model(5), tmp_path_factory.mktemp("c") / "tiny.safetensors")
    model = load_checkpoint(path)
    frames = _frames()
    committee = fit_head_committee(model, frames, [f.get_potential_energy() for f in frames], members=8, seed=1)
    committee.save(committee_path(path))
    return path


def test_members_equal_to_the_base_head_have_no_spread(shipped):
    """perturb 0 and an overwhelming pull to the base head: every member is the model's own head, so the
    committee's energies are the model's energy and the spread vanishes."""
    model = load_checkpoint(shipped)
    frames = _frames(12)
    same = fit_head_committee(model, frames, [f.get_potential_energy() for f in frames], members=3, perturb=0.0,
                              ridge=1e12)
    calc = EquiformerCalculator(model=model, dtype="float64", uncertainty="forces")
    calc.predictor.set_committee(same, "forces")
    atoms = frames[0].copy()
    atoms.calc = calc
    e = atoms.get_potential_energy()
    np.testing.assert_allclose(calc.results["energy_committee"], e, rtol=0, atol=1e-8)
    assert calc.results["energy_uncertainty"] < 1e-8 and calc.results["forces_uncertainty"].max() < 1e-8


def test_spread_is_the_members_spread_and_forces_match_finite_differences(shipped):
    calc = EquiformerCalculator(checkpoint=str(shipped), dtype="float64", uncertainty="forces")
    atoms = _frames(1)[0]
    atoms.calc = calc
    atoms.get_potential_energy()
    r = dict(calc.results)
    members = r["energy_committee"]
    assert members.shape == (8,) and r["energy_uncertainty"] == pytest.approx(np.std(members), rel=1e-12)
    assert r["energy_uncertainty"] > 1e-4  # perturbed heads do disagree
    # F_m = -dE_m/dx by central differences of every member's energy, then the per-atom spread
    h = 1e-4
    fd = np.zeros((8, len(atoms), 3))
    for i in range(len(atoms)):
        for d in range(3):
            e = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[i, d] += sign * h
                e.append(calc.predict([moved], ["energy"])[0]["energy_committee"])
            fd[:, i, d] = -(e[0] - e[1]) / (2 * h)
    spread = np.sqrt(((fd - fd.mean(0)) ** 2).sum(-1).mean(0))
    np.testing.assert_allclose(r["forces_uncertainty"], spread, rtol=1e-5, atol=1e-7)


def test_spread_is_invariant_under_rotation_and_translation(shipped):
    calc = EquiformerCalculator(checkpoint=str(shipped), dtype="float64", uncertainty="forces")
    atoms = _frames(1)[0]
    (a,) = calc.predict([atoms])
    moved = atoms.copy()
    moved.rotate(90, "z", rotate_cell=True)
    moved.translate([0.3, -0.2, 0.1])
    (b,) = calc.predict([moved])
    assert b["energy_uncertainty"] == pytest.approx(a["energy_uncertainty"], rel=1e-9)
    np.testing.assert_allclose(b["forces_uncertainty"], a["forces_uncertainty"], rtol=1e-7, atol=1e-10)


def test_default_is_energy_spread_and_survives_pickling(shipped):
    calc = EquiformerCalculator(checkpoint=str(shipped))
    assert calc.predictor.uncertainty == "energy"
    (r,) = calc.predict([_frames(1)[0]])
    assert "energy_uncertainty" in r and "forces_uncertainty" not in r
    (r2,) = pickle.loads(pickle.dumps(calc)).predict([_frames(1)[0]])
    assert r2["energy_uncertainty"] == pytest.approx(r["energy_uncertainty"], rel=1e-6)
    off = EquiformerCalculator(checkpoint=str(shipped), uncertainty=False)
    assert "energy_uncertainty" not in off.predict([_frames(1)[0]])[0]


def test_a_committee_of_other_weights_is_refused_when_asked_for_and_ignored_by_default(shipped, tmp_path, caplog):
    other = save_checkpoint(make_model(6), tmp_path / "other.safetensors")
    (tmp_path / committee_path(other).name).write_bytes(committee_path(shipped).read_bytes())
    with pytest.raises(CommitteeError, match="belongs to the checkpoint with sha256"):
        EquiformerCalculator(checkpoint=str(other), uncertainty="energy")
    with caplog.at_level(logging.WARNING, logger="equiformer_calc.committee"):
        calc = EquiformerCalculator(checkpoint=str(other))
    assert "running without uncertainty" in caplog.text and calc.predictor.uncertainty == "off"
    with pytest.raises(CommitteeError, match="no committee"):
        EquiformerCalculator(model=make_model(7), uncertainty=True)
    with pytest.raises(ValueError, match="uncertainty must be"):
        EquiformerCalculator(checkpoint=str(shipped), uncertainty="sometimes")


def test_the_service_answers_the_energy_uncertainty_of_the_local_calculator(shipped):
    """The service loads the checkpoint's committee like the calculator does, in-process and in its
    isolated worker, and answers ``energy_uncertainty`` (equal to the local one) with every result."""
    from equiformer_calc.service.app import create_app

    from .service.test_service import as_json, http, serve_in_thread

    atoms = _frames(1)[0]
    (local,) = EquiformerCalculator(checkpoint=str(shipped)).predict([atoms])
    for isolate in (False, True):
        with serve_in_thread(create_app(str(shipped), isolate=isolate)) as url:
            status, body, _ = http(url + "/v1/predict", {"structures": [as_json(atoms)], "properties": ["energy"]},
                                   token=None)
        assert status == 200, body
        (got,) = body["results"]
        assert set(got) == {"energy", "energy_uncertainty"}
        assert got["energy_uncertainty"] == pytest.approx(local["energy_uncertainty"], rel=1e-5)
