"""Screening you can trust (issue 28): anomalies in the summary, the committee's spread of adsorption
energies, and top-k verification by a reference calculator (``refine=``), journalled and resumable after
SIGKILL, with the reference's own gas references."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import ase.db
import numpy as np
import pytest
from ase.calculators.emt import EMT

from equiformer_calc import EquiformerCalculator, screen_adsorbates
from equiformer_calc.checkpoint import save_checkpoint
from equiformer_calc.cli import main as cli_main
from equiformer_calc.surfaces import ANOMALIES, bottom_fixed_mask, build_surface, gas_reference_energy, reference_potentials
from equiformer_calc.workflows.screening.refine import select_candidates
from equiformer_calc.workflows.screening.summary import summarise

from ..helpers import make_model

ROOT = Path(__file__).resolve().parents[2]
SLABS = {"Cu-fcc111": build_surface("Cu", "111", size=(2, 2, 3), vacuum=5.0)}


@pytest.fixture(scope="module")
def model():
    return make_model(3)


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    return str(save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"))


def _site(surface="S", ads="O", site="a", e=0.0, **flags):
    row = {"surface": surface, "adsorbate": ads, "site": site, "site_kind": "fcc", "final_site": "fcc", "e_ads": e,
           "e_ads_uncertainty": flags.pop("u", float("nan")), "energy": e, "converged": True, "nsteps": 3,
           "moved": False, "status": "done", "row_id": 1, "error": ""}
    row.update({k: flags.get(k, False) for k in ANOMALIES})
    return row


def test_anomalous_sites_are_counted_never_best_and_an_all_anomalous_group_says_so():
    slab = SLABS["Cu-fcc111"]
    sites = [_site("S", "O", "a", -3.0, surface_changed=True), _site("S", "O", "b", -1.0),
             _site("S", "O", "c", -2.0, intercalated=True),
             _site("S", "OH", "a", -5.0, desorbed=True), _site("S", "OH", "b", -4.0, dissociated=True)]
    o, oh = summarise([("S", slab)], ["O", "OH"], sites)
    assert o["e_ads_min"] == -1.0 and o["site"] == "b" and o["n_valid"] == 1 and o["n_anomalous"] == 2
    assert o["n_surface_changed"] == 1 and o["n_intercalated"] == 1 and o["note"] == ""
    assert np.isnan(oh["e_ads_min"]) and oh["n_anomalous"] == 2 and oh["note"] == "all relaxations anomalous"
    # and the top-k verification never picks them either
    picked = select_candidates(sites, top_k=3)
    assert [r["site"] for r in picked[("S", "O")]] == ["b"] and picked[("S", "OH")] == []


def test_lcb_ranking_prefers_the_uncertain_site():
    sites = [_site("S", "O", "a", -1.00, u=0.01), _site("S", "O", "b", -0.95, u=0.30)]
    assert [r["site"] for r in select_candidates(sites, 1, "energy")[("S", "O")]] == ["a"]
    assert [r["site"] for r in select_candidates(sites, 1, "lcb", kappa=1.0)[("S", "O")]] == ["b"]
    with pytest.raises(ValueError, match="e_ads_uncertainty"):
        select_candidates([_site("S", "O", "a", -1.0)], 1, "lcb")


def test_rescue_adds_reconstructed_and_intercalated_minima_below_the_kth_valid_one():
    sites = [_site("S", "O", "a", -3.0, surface_changed=True), _site("S", "O", "b", -1.0),
             _site("S", "O", "c", -2.0, intercalated=True), _site("S", "O", "d", -4.0, desorbed=True),
             _site("S", "O", "e", -0.5), _site("S", "O", "f", 0.0, intercalated=True),
             _site("S", "O", "g", -5.0, intercalated=True, dissociated=True)]
    assert [r["site"] for r in select_candidates(sites, 1)[("S", "O")]] == ["b"]
    assert [r["site"] for r in select_candidates(sites, 1, anomalous=True)[("S", "O")]] == ["b", "a", "c"]
    assert [r["site"] for r in select_candidates(sites, 2, anomalous=True)[("S", "O")]] == ["b", "e", "a", "c"]
    # fewer valid sites than K: every rescuable one goes in; none valid at all: only the rescued
    assert [r["site"] for r in select_candidates(sites, 3, anomalous=True)[("S", "O")]] == ["b", "e", "a", "c", "f"]
    only = [_site("S", "O", "a", -3.0, surface_changed=True)]
    assert [r["site"] for r in select_candidates(only, 1, anomalous=True)[("S", "O")]] == ["a"]


def test_refine_anomalous_relaxes_a_flagged_ml_minimum_with_the_reference(model, tmp_path):
    """A site flagged intercalated in the ML database is skipped by ML+RX, and relaxed by the reference
    with ``refine_anomalous``: the reference's own check decides whether its minimum counts."""
    calc = EquiformerCalculator(model=model)
    kw = dict(calculator=calc, steps=4, fix_bottom=1, progress=False, site_kinds=["ontop", "fcc"])
    base = screen_adsorbates(SLABS, ["O"], db=tmp_path / "s.db", **kw)
    flagged = min(base.sites, key=lambda r: r["e_ads"])
    db = ase.db.connect(tmp_path / "s.db")
    row = db.get(task_key=f"ads/Cu-fcc111/O/{flagged['site']}")
    db.update(row.id, intercalated=True, anomalies="intercalated")
    other = next(r["site"] for r in base.sites if r["site"] != flagged["site"])
    with pytest.raises(ValueError, match="refine_anomalous needs refine_mode='relax'"):
        screen_adsorbates(SLABS, ["O"], db=tmp_path / "s.db", refine="emt", top_k=1, refine_mode="sp",
                          refine_anomalous=True, **kw)
    skip = screen_adsorbates(SLABS, ["O"], db=tmp_path / "s.db", refine="emt", top_k=1, refine_mode="relax",
                             refine_anomalous=False, **kw)
    assert skip.summary[0]["n_ref"] == 1 and skip.summary[0]["ref_site"] == other
    # rescue is the default of relax mode
    rescue = screen_adsorbates(SLABS, ["O"], db=tmp_path / "s.db", refine="emt", top_k=1, refine_mode="relax", **kw)
    (s,) = rescue.summary
    assert s["n_ref"] == 2 and s["site"] == other  # the model's best stays the valid one
    refs = {r.site: r for r in ase.db.connect(tmp_path / "s.db").select(kind="reference") if r.get("site")}
    assert set(refs) == {flagged["site"], other}
    rescued = refs[flagged["site"]]
    assert rescued.ref_mode == "relax" and rescued.ref_calls > 1 and rescued.ref_anomalies == ""
    atoms = rescued.toatoms()
    atoms.calc = EMT()
    assert rescued.ref_energy == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
    e = {k: r.e_ads_ref for k, r in refs.items()}
    assert s["e_ads_ref"] == pytest.approx(min(e.values())) and s["ref_site"] == min(e, key=e.get)
    assert rescue.refine.calls > skip.refine.calls


def _emt_energy(row) -> float:
    atoms = row.toatoms()
    atoms.calc = EMT()
    return atoms.get_potential_energy()


def test_refine_sp_is_emt_at_the_ml_minima_with_emt_gas_references(model, tmp_path):
    """ML+SP with EMT as the reference: every refined number is EMT's own adsorption energy at the ML
    geometry, against EMT's own relaxed clean slab and gas references (recomputed here with ASE's EMT)."""
    calc = EquiformerCalculator(model=model)
    res = screen_adsorbates(SLABS, ["O", "OH"], db=tmp_path / "s.db", calculator=calc, steps=4, fix_bottom=1,
                            out_dir=tmp_path / "out", progress=False, refine="emt", top_k=2, refine_mode="sp")
    db = ase.db.connect(tmp_path / "s.db")
    refs = list(db.select(kind="reference"))
    fixed = [r for r in refs if not r.ml_task_key.startswith("ads/")]
    assert sorted(r.ml_task_key for r in fixed) == ["gas/CO", "gas/H2", "gas/H2O", "gas/N2", "slab/Cu-fcc111"]
    for r in fixed:  # relaxed by EMT itself: EMT's energy there, EMT forces below fmax on free atoms
        atoms = r.toatoms()
        atoms.calc = EMT()
        assert r.ref_energy == pytest.approx(atoms.get_potential_energy(), abs=1e-9) and r.ref_mode == "relax"
        assert np.linalg.norm(atoms.get_forces(), axis=1).max() <= 0.05 + 1e-9
    mu = reference_potentials({r.molecule: r.ref_energy for r in fixed if r.kind == "reference" and "gas/" in r.ml_task_key})
    e_slab = next(r.ref_energy for r in fixed if r.ml_task_key.startswith("slab/"))
    ads_refs = [r for r in refs if r.ml_task_key.startswith("ads/")]
    assert len(ads_refs) == sum(min(2, s["n_valid"]) for s in res.summary) >= 1
    for r in ads_refs:
        ml_row = db.get(task_key=r.ml_task_key)
        np.testing.assert_allclose(r.positions, ml_row.positions, atol=1e-12)  # a single point: no move
        symbols = ml_row.toatoms().get_chemical_symbols()[12:]
        expected = _emt_energy(ml_row) - e_slab - gas_reference_energy(symbols, mu)
        assert r.e_ads_ref == pytest.approx(expected, abs=1e-9) and r.e_ads_ml == pytest.approx(ml_row.e_ads)
        assert r.ref_calls == 1 and r.ref_mode == "sp"
        # ref_fmax: EMT's largest force on a free atom at the ML minimum (the bottom layer is fixed)
        atoms = ml_row.toatoms()
        atoms.calc = EMT()
        free = np.ones(len(atoms), dtype=bool)
        free[:12] = ~bottom_fixed_mask(atoms[:12], 1)
        assert r.ref_fmax == pytest.approx(np.linalg.norm(atoms.get_forces(apply_constraint=False)[free], axis=1).max(),
                                           abs=1e-9)
    assert res.refine.calls == sum(r.ref_calls for r in refs)
    assert res.refine.reference_calls == sum(r.ref_calls for r in fixed)
    for s in res.summary:
        mine = [r for r in ads_refs if r.adsorbate == s["adsorbate"]]
        if mine:
            best = min(mine, key=lambda r: r.e_ads_ref)
            assert s["e_ads_ref"] == pytest.approx(best.e_ads_ref) and s["ref_calls"] == len(mine)
            assert s["ref_fmax"] == best.ref_fmax  # the forces at the group's verified best
    with open(tmp_path / "out" / "screen_summary.csv") as f:
        header = next(csv.reader(f))
    assert {"e_ads_ref", "ref_calls", "ref_site", "ref_fmax"} <= set(header)
    totals = json.loads((tmp_path / "out" / "screen_refine.json").read_text())
    assert totals["reference_calls"] == res.refine.calls and totals["gas_and_slab_calls"] == res.refine.reference_calls
    # a rerun pays nothing
    again = screen_adsorbates(SLABS, ["O", "OH"], db=tmp_path / "s.db", calculator=calc, steps=4, fix_bottom=1,
                              progress=False, refine="emt", top_k=2, refine_mode="sp")
    assert again.refine.paid_calls == 0 and again.refine.calls == res.refine.calls
    assert [s["e_ads_ref"] for s in again.summary] == pytest.approx([s["e_ads_ref"] for s in res.summary], nan_ok=True)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["bfgs", "surrogate"])
def test_refine_relax_resumes_after_sigkill(checkpoint, tmp_path, optimizer):
    """ML+RX with a reference that SIGKILLs its process at its 30th call: the rerun replays every
    journalled call (paying only for the rest: the steered relaxations replay their journalled positions)
    and ends with the numbers of an uninterrupted run."""
    args = ["screen", "--metals", "Cu", "--facets", "111", "--adsorbates", "O", "--size", "2x2x3",
            "--site-kinds", "ontop,fcc", "--steps", "4", "--fix-bottom", "1", "--checkpoint", checkpoint,
            "--refine", "tests.workflows.killing_emt:factory", "--top-k", "2", "--refine-mode", "relax",
            "--refine-optimizer", optimizer]
    killed = tmp_path / "killed"
    env = {**os.environ, "KILL_AT_CALL": "30", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "equiformer_calc.cli", *args, "--db", str(killed / "s.db"),
                           "--out-dir", str(killed)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    journals = list((killed / "s.db.refine").glob("*.jsonl"))
    journalled = sum(len(p.read_text().splitlines()) for p in journals)
    assert journalled == 29  # every call before the kill, flushed
    assert cli_main([*args, "--db", str(killed / "s.db"), "--out-dir", str(killed)]) == 0
    totals = json.loads((killed / "screen_refine.json").read_text())
    assert totals["optimizer"] == optimizer
    assert totals["paid_calls_this_run"] == totals["reference_calls"] - journalled  # nothing paid twice
    clean = tmp_path / "clean"
    assert cli_main([*args, "--db", str(clean / "s.db"), "--out-dir", str(clean)]) == 0

    def table(folder):
        with open(folder / "screen_summary.csv") as f:
            return list(csv.DictReader(f))

    (a,), (b,) = table(killed), table(clean)
    assert a["e_ads_ref"] == b["e_ads_ref"] and a["ref_calls"] == b["ref_calls"] and a["ref_site"] == b["ref_site"]
    assert int(a["ref_calls"]) > 2  # relaxations, not single points
    db = ase.db.connect(killed / "s.db")
    assert len({r.task_key for r in db.select(kind="reference")}) == db.count(kind="reference")  # no duplicates


def test_refine_refuses_a_bad_reference_before_any_work(model, tmp_path):
    from equiformer_calc.data.labellers import LabellerError

    calc = EquiformerCalculator(model=model)
    with pytest.raises(LabellerError, match="unknown labeller"):
        screen_adsorbates(SLABS, ["O"], db=tmp_path / "s.db", calculator=calc, steps=2, fix_bottom=1, progress=False,
                          site_kinds=["ontop"], refine="nonsense", top_k=1)
    with pytest.raises(ValueError, match="refine_mode"):
        screen_adsorbates(SLABS, ["O"], db=tmp_path / "s2.db", calculator=calc, steps=2, progress=False,
                          refine="emt", refine_mode="dft")


def test_e_ads_uncertainty_is_the_members_spread_of_their_own_adsorption_energies(tmp_path):
    """With a committee, every site's ``e_ads_uncertainty`` is the std over members of E_ads computed
    with each member's own system, slab and gas energies (recomputed here from the database's structures)."""
    from ase.build import add_adsorbate, fcc111

    from equiformer_calc.checkpoint import load_checkpoint
    from equiformer_calc.committee import committee_path, fit_head_committee

    path = save_checkpoint(make_model(8), tmp_path / "m.safetensors")
    frames = []
    for k in range(12):
        a = fcc111("Cu", (2, 2, 2), vacuum=5.0)
        add_adsorbate(a, "O", 1.6, "fcc")
        a.rattle(0.05, seed=k)
        a.calc = EMT()
        frames.append(a)
    model = load_checkpoint(path)
    fit_head_committee(model, frames, [f.get_potential_energy() for f in frames], members=4).save(committee_path(path))
    calc = EquiformerCalculator(checkpoint=str(path))
    res = screen_adsorbates(SLABS, ["O"], db=tmp_path / "s.db", calculator=calc, steps=3, fix_bottom=1,
                            progress=False, site_kinds=["ontop", "fcc"], out_dir=tmp_path / "out")
    db = ase.db.connect(tmp_path / "s.db")

    def members(row):
        return calc.predict([row.toatoms()], ["energy"])[0]["energy_committee"]

    gas = {r.molecule: members(r) for r in db.select(kind="gas")}
    slab = members(db.get(kind="slab"))
    for site in res.sites:
        row = db.get(id=site["row_id"])
        system = members(row)
        e_ads = [system[m] - slab[m] - gas_reference_energy(["O"], reference_potentials({k: v[m] for k, v in gas.items()}))
                 for m in range(4)]
        assert site["e_ads_uncertainty"] == pytest.approx(np.std(e_ads), rel=1e-9) and site["e_ads_uncertainty"] > 0
    (best,) = res.summary
    assert best["uncertain"] == (best["e_ads_uncertainty"] > 0.1)
    assert (tmp_path / "out" / "screen_heatmap.png").read_bytes()[:4] == b"\x89PNG"


def test_reference_only_screen_counts_every_call_and_finds_the_hollow_site():
    """EMT alone on O/Cu(111): O binds in a three-fold hollow, below on-top, and the call count is
    the sum over every relaxation (4 gas molecules, the slab, 3 sites)."""
    from equiformer_calc.workflows.screening.refine import reference_only_screen

    only = reference_only_screen(SLABS, ["O"], "emt", site_kinds=["ontop", "fcc", "hcp"], fix_bottom=1)
    g = only.groups[("Cu-fcc111", "O")]
    assert g["site"].split("_")[0] in ("fcc", "hcp") and g["sites"]["ontop_0"]["e_ads"] > g["best"] + 0.1
    assert only.calls > sum(s["calls"] for s in g["sites"].values()) > 3
