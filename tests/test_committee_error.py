"""The energy-error model that the committee adds to energies' uncertainty (``equiformer_calc.energy_error``):
it reproduces a training frame's own residual, it enters the members as documented, it is invariant under
rigid motions and permutations, it grows far from the training frames, its file is pinned to the model's
weights, and its uncertainty reaches ``calc.results`` and the service's answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import fcc111

from equiformer_calc import EquiformerCalculator
from equiformer_calc.checkpoint import load_checkpoint, save_checkpoint
from equiformer_calc.committee import (CommitteeError, HeadCommittee, add_error_model, committee_path,
                                       fit_head_committee, trunk_features)
from equiformer_calc.energy_error import fit_energy_error_model, sign_patterns

from .helpers import make_model
from .test_committee import _frames as committee_frames


def _frames(n: int = 16):
    """Cu(111) with O, OH or CO, labelled by EMT (tracked atoms in every frame)."""
    return committee_frames(n, adsorbates=("O", "OH", "CO"), height=1.6)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A checkpoint file with its committee (8 heads + the error model, k=2) next to it."""
    path = save_checkpoint(make_model(5), tmp_path_factory.mktemp("e") / "tiny.safetensors")
    model = load_checkpoint(path)
    frames = _frames()
    energies = [f.get_potential_energy() for f in frames]
    feats = trunk_features(model, frames)
    heads = fit_head_committee(model, None, energies, members=8, seed=1, features=feats)
    add_error_model(heads, model, feats, energies, k=2).save(committee_path(path))
    return path


def test_a_training_frame_with_one_neighbour_gets_its_own_residual(shipped):
    """k=1: every tracked atom of a training frame finds itself, so the summed estimate is the frame's
    residual E_ref - E_model, with its sign; a frame without tracked atoms gets none."""
    model = load_checkpoint(shipped)
    frames = _frames(6)
    feats = trunk_features(model, frames)
    residuals = np.array([f.get_potential_energy() for f in frames]) - feats.energy
    error = fit_energy_error_model(feats.features, feats.owner, feats.species, residuals, model.elements, k=1)
    p, _ = error.atom_terms(torch.as_tensor(feats.features), torch.as_tensor(feats.species))
    per_frame = np.bincount(feats.owner, weights=p.numpy(), minlength=len(frames))
    np.testing.assert_allclose(per_frame, residuals, rtol=1e-9, atol=1e-9)
    assert np.abs(residuals).max() > 1e-3  # a real residual was reproduced, not zeros
    bare = fcc111("Cu", (2, 2, 2), vacuum=5.0)
    bf = trunk_features(model, [bare])
    p_bare, _ = error.atom_terms(torch.as_tensor(bf.features), torch.as_tensor(bf.species))
    assert float(p_bare.abs().sum()) == 0.0
    with pytest.raises(ValueError, match="tracked elements"):
        fit_energy_error_model(feats.features, feats.owner, feats.species, residuals, model.elements, tracked=("Xe",))


def test_the_members_carry_the_estimates_with_fixed_signs(shipped):
    """energy_committee = the heads' members + z p + y q (z, y orthogonal +-1 patterns), so
    energy_uncertainty, their spread, holds the heads' spread and the error model's terms."""
    model = load_checkpoint(shipped)
    committee = HeadCommittee.load(committee_path(shipped))
    heads_only = HeadCommittee(committee.A, committee.a, committee.w, committee.b, committee.base_sha256)
    atoms = _frames(1)[0]
    calc = EquiformerCalculator(model=model, dtype="float64")
    calc.predictor.set_committee(committee, "energy")
    (full,) = calc.predict([atoms], ["energy"])
    calc.predictor.set_committee(heads_only, "energy")
    (bare,) = calc.predict([atoms], ["energy"])
    feats = trunk_features(model, [atoms])
    p, q = committee.error_model.to("cpu", torch.float64).atom_terms(torch.as_tensor(feats.features),
                                                                     torch.as_tensor(feats.species))
    z, y = sign_patterns(8)
    expected = bare["energy_committee"] + z.numpy() * float(p.sum()) + y.numpy() * float(q.sum())
    np.testing.assert_allclose(full["energy_committee"], expected, rtol=0, atol=1e-5)
    assert full["energy_uncertainty"] == pytest.approx(np.std(full["energy_committee"]), rel=1e-12)
    assert full["energy"] == pytest.approx(bare["energy"], abs=1e-9)  # the energy itself is the model's
    assert abs(float(p.sum())) > 10 * bare["energy_uncertainty"]  # the error estimate is what dominates here
    with pytest.raises(ValueError, match="multiple of 4"):
        sign_patterns(6)


def test_uncertainty_is_invariant_under_rotation_translation_and_permutation(shipped):
    calc = EquiformerCalculator(checkpoint=str(shipped), dtype="float64")
    atoms = _frames(1)[0]
    (a,) = calc.predict([atoms], ["energy"])
    moved = atoms.copy()
    moved.rotate(77, (1, 2, 3), rotate_cell=True)
    moved.translate([0.3, -0.2, 0.1])
    moved = moved[np.random.default_rng(0).permutation(len(moved))]
    (b,) = calc.predict([moved], ["energy"])
    assert b["energy_uncertainty"] == pytest.approx(a["energy_uncertainty"], rel=1e-7)
    np.testing.assert_allclose(b["energy_committee"], a["energy_committee"], rtol=1e-9)


def test_uncertainty_grows_for_a_structure_far_from_the_training_frames(shipped):
    """The same slab and adsorbate compressed by 20 %: every atom's features leave the training frames'
    distribution, so the novelty term and the uncertainty grow."""
    calc = EquiformerCalculator(checkpoint=str(shipped), dtype="float64")
    atoms = _frames(1)[0]
    squeezed = atoms.copy()
    squeezed.set_cell(atoms.cell * 0.8, scale_atoms=True)
    (a,) = calc.predict([atoms], ["energy"])
    (b,) = calc.predict([squeezed], ["energy"])
    assert b["energy_uncertainty"] > 2 * a["energy_uncertainty"]


def test_the_file_round_trips_and_is_pinned_to_its_weights(shipped, tmp_path):
    saved = HeadCommittee.load(committee_path(shipped))
    assert saved.error_model is not None and saved.error_model.k == 2
    assert saved.error_model.metadata["tracked"] == ["H", "C", "N", "O"]
    other = save_checkpoint(make_model(6), tmp_path / "other.safetensors")
    committee_path(other).write_bytes(committee_path(shipped).read_bytes())
    with pytest.raises(CommitteeError, match="belongs to the checkpoint with sha256"):
        EquiformerCalculator(checkpoint=str(other), uncertainty="energy")
    # a file with only part of the error model's tensors is no committee file
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(committee_path(shipped)))
    del tensors["err.m99"]
    broken = tmp_path / "broken.committee.safetensors"
    save_file(tensors, str(broken), metadata={"format": "equiformer-calc-committee", "base_sha256": ""})
    with pytest.raises(CommitteeError, match="not an equiformer-calc committee file"):
        HeadCommittee.load(broken)


def test_calc_results_and_the_service_carry_the_uncertainty(shipped):
    from equiformer_calc.service.app import create_app

    from .service.test_service import as_json, http, serve_in_thread

    atoms = _frames(1)[0]
    local = EquiformerCalculator(checkpoint=str(shipped))
    atoms.calc = local
    atoms.get_potential_energy()
    assert local.results["energy_uncertainty"] > 0
    assert local.results["energy_uncertainty"] == pytest.approx(np.std(local.results["energy_committee"]), rel=1e-9)
    with serve_in_thread(create_app(str(shipped), isolate=False)) as url:
        status, body, _ = http(url + "/v1/predict", {"structures": [as_json(atoms)], "properties": ["energy"]},
                               token=None)
    assert status == 200, body
    (got,) = body["results"]
    assert got["energy_uncertainty"] == pytest.approx(local.results["energy_uncertainty"], rel=1e-4)


def test_the_magnitude_mode_estimates_the_size_of_the_error_and_opposite_errors_do_not_cancel(shipped, tmp_path):
    """magnitude=True: p is the neighbours' mean absolute error. With k=1 every training frame gets the size
    of its own residual |E_ref - E_model| (the signed mode gives the residual itself); two neighbours with
    errors of opposite sign give their common size, where the signed mode cancels them to zero. The flag and
    the novelty factor survive the committee file."""
    model = load_checkpoint(shipped)
    frames = _frames(6)
    feats = trunk_features(model, frames)
    residuals = np.array([f.get_potential_energy() for f in frames]) - feats.energy
    magnitude = fit_energy_error_model(feats.features, feats.owner, feats.species, residuals, model.elements, k=1,
                                       magnitude=True)
    p, _ = magnitude.atom_terms(torch.as_tensor(feats.features), torch.as_tensor(feats.species))
    np.testing.assert_allclose(np.bincount(feats.owner, weights=p.numpy(), minlength=len(frames)), np.abs(residuals),
                               rtol=1e-9, atol=1e-9)
    assert np.abs(residuals).max() > 1e-3

    # two training frames, each one tracked atom at the same features, with errors +0.4 and -0.4 eV
    h = list(model.elements).index("H")
    width = feats.features.shape[1]
    x = np.random.default_rng(0).standard_normal((4, width))
    x[1] = x[0]
    cu = list(model.elements).index("Cu")
    owner, species = np.array([0, 1, 0, 1]), np.array([h, h, cu, cu])  # + two untracked (metal) atoms
    for mode, expected in ((False, 0.0), (True, 0.4)):
        em = fit_energy_error_model(x, owner, species, [0.4, -0.4], model.elements, k=2, magnitude=mode)
        p, _ = em.atom_terms(torch.as_tensor(x[:1]), torch.as_tensor(species[:1]))
        assert float(p[0]) == pytest.approx(expected, abs=1e-3)  # features stored as float16

    energies = [f.get_potential_energy() for f in frames]
    heads = fit_head_committee(model, None, energies, members=4, seed=1, features=feats)
    com = add_error_model(heads, model, feats, energies, k=1, magnitude=True, novelty=0.5)
    plain = add_error_model(heads, model, feats, energies, k=1)
    assert com.error_model.scale == pytest.approx(0.5 * plain.error_model.scale)
    back = HeadCommittee.load(com.save(tmp_path / "m.committee.safetensors"))
    assert back.error_model.magnitude and back.error_model.metadata["novelty_factor"] == 0.5
    assert back.error_model.scale == pytest.approx(com.error_model.scale)
