"""Adsorbate screening (``workflows.screening``): end to end, resume after a crash, another model
refused, the ``screen`` command, the public API."""

from __future__ import annotations

import csv
import json

import ase.db
import numpy as np
import pytest
import torch
from ase.build import fcc100, fcc111

from equiformer_calc import EquiformerCalculator, relax, relax_batch, run_md, screen_adsorbates
from equiformer_calc.cli import main as cli_main
from equiformer_calc.surfaces import ANOMALIES, build_surface, reference_potentials

from ..helpers import make_model
from .shared import SEED, CountingPredict


def screen_kwargs(calc, tmp_path, **kw):
    return dict(db=tmp_path / "screen.db", calculator=calc, fmax=0.05, steps=4, fix_bottom=1,
                out_dir=tmp_path / "out", progress=False, **kw)


def test_screen_end_to_end(model, tmp_path):
    calc = EquiformerCalculator(model=model)
    slabs = {"Cu-fcc111": build_surface("Cu", "111", size=(2, 2, 3), vacuum=5.0)}
    res = screen_adsorbates(slabs, ["O", "OH"], **screen_kwargs(calc, tmp_path))
    db = ase.db.connect(tmp_path / "screen.db")
    rows = list(db.select())
    keys = [r.task_key for r in rows]
    assert len(keys) == len(set(keys)) == 4 + 1 + 2 * 4  # gas refs, slab, 2 adsorbates x 4 sites
    assert res.computed == 13 and res.skipped == 0
    gas = {r.molecule: r.energy for r in rows if r.kind == "gas"}
    mu = reference_potentials(gas)
    e_slab = next(r.energy for r in rows if r.kind == "slab")
    for r in (r for r in rows if r.kind == "adsorbate"):
        n_slab = 12
        expected = r.energy - e_slab - sum(mu[s] for s in r.toatoms().get_chemical_symbols()[n_slab:])
        assert r.e_ads == pytest.approx(expected, abs=1e-9)
        assert r.status == "done" and r.model_hash == db.metadata["model_hash"]
        assert len(r.data["step_energies"]) == r.nsteps + 1
    assert len(res.summary) == 2
    for s in res.summary:  # the minimum over sites without any of AdsorbML's four anomalies
        site_rows = [r for r in rows if r.kind == "adsorbate" and r.adsorbate == s["adsorbate"]]
        valid = [r.e_ads for r in site_rows
                 if not (r.desorbed or r.dissociated or r.surface_changed or r.intercalated)]
        assert s["n_sites"] == 4 and s["n_valid"] == len(valid) and s["n_anomalous"] == 4 - len(valid)
        assert all(r.anomalies == ",".join(k for k in ANOMALIES if r.get(k)) for r in site_rows)
        if valid:
            assert s["e_ads_min"] == pytest.approx(min(valid))
        else:  # (a random model may well break OH apart)
            assert np.isnan(s["e_ads_min"]) and s["site"] == ""
    with open(tmp_path / "out" / "screen_summary.csv") as f:
        assert [r["adsorbate"] for r in csv.DictReader(f)] == ["O", "OH"]
    assert (tmp_path / "out" / "screen_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "out" / "screen_sites.csv").exists()


def test_screen_resumes_after_a_crash(model, tmp_path):
    calc = EquiformerCalculator(model=model)
    slabs = {"Cu-fcc100": build_surface("Cu", "100", size=(2, 2, 3), vacuum=5.0)}
    written: list[str] = []

    def crash_after_seven(key: str, row_id: int) -> None:
        written.append(key)
        if len(written) == 7:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        screen_adsorbates(slabs, ["O", "CO"], callback=crash_after_seven, **screen_kwargs(calc, tmp_path))
    db = ase.db.connect(tmp_path / "screen.db")
    first = {r.task_key: (r.id, r.mtime, r.energy) for r in db.select()}
    assert list(first) == written  # everything finished before the crash is there, nothing else

    res = screen_adsorbates(slabs, ["O", "CO"], **screen_kwargs(calc, tmp_path))
    rows = {r.task_key: r for r in db.select()}
    assert len(rows) == db.count() == 4 + 1 + 2 * 3  # no duplicates (Cu(100): 3 sites)
    assert res.skipped == 7 and res.computed == db.count() - 7
    for key, (row_id, mtime, energy) in first.items():  # finished rows untouched
        assert (rows[key].id, rows[key].mtime, rows[key].energy) == (row_id, mtime, energy)

    with CountingPredict(calc.predictor) as counter:  # finished work: nothing to do
        again = screen_adsorbates(slabs, ["O", "CO"], **screen_kwargs(calc, tmp_path))
    assert counter.sizes == [] and again.computed == 0 and db.count() == len(rows)
    assert [s["e_ads_min"] for s in again.summary] == [s["e_ads_min"] for s in res.summary]


def test_screen_refuses_another_model(model, tmp_path):
    slabs = {"Cu-fcc111": build_surface("Cu", "111", size=(2, 2, 3), vacuum=5.0)}
    screen_adsorbates(slabs, ["O"], **screen_kwargs(EquiformerCalculator(model=model), tmp_path, site_kinds=["ontop"]))
    other = EquiformerCalculator(model=make_model(SEED + 1))
    with pytest.raises(ValueError, match="another model"):
        screen_adsorbates(slabs, ["O"], **screen_kwargs(other, tmp_path, site_kinds=["ontop"]))


def test_cli_screen(checkpoint, tmp_path):
    rc = cli_main(["screen", "--metals", "Cu", "--facets", "111", "--adsorbates", "O", "--size", "2x2x3",
                   "--site-kinds", "ontop,fcc", "--steps", "3", "--fix-bottom", "1", "--checkpoint", checkpoint,
                   "--db", str(tmp_path / "s.db"), "--out-dir", str(tmp_path / "out")])
    assert rc == 0
    with open(tmp_path / "out" / "screen_summary.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["surface"] == "Cu-fcc111" and row["adsorbate"] == "O" and row["n_sites"] == "2"
    assert json.loads(json.dumps(ase.db.connect(tmp_path / "s.db").metadata))["settings"]["steps"] == 3


def test_cli_screen_refuses_rescue_with_single_points_naming_the_flags(checkpoint, tmp_path, capsys):
    rc = cli_main(["screen", "--metals", "Cu", "--facets", "111", "--adsorbates", "O", "--checkpoint", checkpoint,
                   "--db", str(tmp_path / "s.db"), "--out-dir", str(tmp_path / "out"), "--refine", "emt",
                   "--refine-mode", "sp", "--refine-anomalous"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--refine-anomalous needs --refine-mode relax" in err
    assert not (tmp_path / "s.db").exists()  # refused before any work



def test_public_api():
    import equiformer_calc
    import equiformer_calc.workflows as wf

    for name in ("relax", "run_md", "relax_batch", "screen_adsorbates"):
        assert getattr(equiformer_calc, name) is getattr(wf, name)
    assert torch.get_num_threads() >= 1
