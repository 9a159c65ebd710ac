"""Batched NEB against ASE's own ``ase.mep.NEB`` evaluated image by image (float64), and resuming."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import add_adsorbate, fcc111
from ase.constraints import FixAtoms
from ase.mep import NEB
from ase.optimize import FIRE

from equiformer_calc import EquiformerCalculator, relax
from equiformer_calc.workflows.neb import JOURNAL, interpolate_band, run_neb

from ..helpers import make_model


@pytest.fixture(scope="module")
def calc():
    return EquiformerCalculator(model=make_model(3), dtype="float64")


def endpoints():
    """O in the fcc and the hcp hollow of a frozen 2x2x2 Cu(111) slab: an O hop."""
    slabs = []
    for site in ("fcc", "hcp"):
        s = fcc111("Cu", (2, 2, 2), vacuum=5.0)
        add_adsorbate(s, "O", 1.2, site)
        s.set_constraint(FixAtoms(indices=list(range(8))))
        slabs.append(s)
    return slabs


def ase_neb(calc, initial, final, images, steps, fmax):
    band, neb = interpolate_band(initial, final, images, "linear", climb=True)
    for image in band:
        image.calc = EquiformerCalculator(model=calc.model, dtype="float64")
    opt = FIRE(neb, logfile=None)
    opt.run(fmax=fmax, steps=steps)
    return np.array([im.get_potential_energy() for im in band]), opt.nsteps


def test_equals_ase_neb(calc):
    initial, final = endpoints()
    ours = run_neb(initial, final, images=3, calculator=calc, fmax=0.05, steps=60, interpolation="linear",
                   saddle_vibrations=False)
    theirs, nsteps = ase_neb(calc, initial, final, 3, 60, 0.05)
    assert ours.nsteps == nsteps
    assert abs(ours.barrier - (theirs.max() - theirs[0])) < 1e-3
    np.testing.assert_allclose(ours.energies, theirs, atol=1e-6)
    # one batched call per step (plus the first, which also evaluates the endpoints)
    assert ours.calls == ours.nsteps + 1


def test_resume_continues(calc, tmp_path):
    initial, final = endpoints()
    kw = dict(images=3, calculator=calc, fmax=0.05, interpolation="linear", saddle_vibrations=False)
    full = run_neb(initial, final, steps=30, **kw)
    part = run_neb(initial, final, steps=12, out_dir=tmp_path, **kw)
    assert part.nsteps == 12
    lines = (tmp_path / JOURNAL).read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 12
    # a kill in the middle of a line leaves a partial line: ignored
    with open(tmp_path / JOURNAL, "a") as f:
        f.write('{"step": 13, "positions": [[0')
    rest = run_neb(initial, final, steps=30, out_dir=tmp_path, **kw)
    assert rest.resumed_from == 12
    steps = [json.loads(line)["step"] for line in (tmp_path / JOURNAL).read_text().splitlines()]
    assert steps[:13] == list(range(13)) and steps[-1] == rest.nsteps  # the cut line is gone
    assert rest.nsteps == full.nsteps
    np.testing.assert_allclose(rest.energies, full.energies, atol=1e-8)
    assert (tmp_path / "neb_profile.csv").exists() and (tmp_path / "neb_profile.png").exists()
    with pytest.raises(ValueError, match="other inputs or settings"):
        run_neb(initial, final, steps=30, out_dir=tmp_path, **{**kw, "images": 4})


def test_saddle_imaginary_frequency(tmp_path):
    """With the shipped model (float64) and relaxed endpoints, the O hop fcc -> hcp has a barrier
    inside the band and the climbing image is a first-order saddle: one imaginary mode."""
    calc = EquiformerCalculator(dtype="float64")  # the shipped default checkpoint
    initial, final = (relax(a, calculator=calc, fmax=0.01, steps=200).atoms for a in endpoints())
    res = run_neb(initial, final, images=3, calculator=calc, fmax=0.03, steps=200, interpolation="linear",
                  out_dir=tmp_path)
    assert res.converged
    assert 0 < res.saddle < 4 and res.barrier > 0.05
    assert res.vibrations is not None and res.vibrations.indices == [8]
    assert res.imaginary_frequency is not None and len(res.vibrations.imaginary) == 1
    assert "barrier" in res.summary()
    for name in ("neb_profile.csv", "neb_profile.png", "neb_band.extxyz", "neb_result.json"):
        assert (tmp_path / name).exists()


def test_bad_input(calc):
    initial, final = endpoints()
    with pytest.raises(ValueError, match="same number|same atoms"):
        run_neb(initial, final[:-1], calculator=calc)
    with pytest.raises(ValueError, match="images"):
        run_neb(initial, final, images=0, calculator=calc)
    with pytest.raises(ValueError, match="optimizer"):
        run_neb(initial, final, optimizer="nope", calculator=calc)
