"""The AdsorbML-style relaxation benchmark (``workflows.adsorbml``): through ``equiformer-calc
adsorbml`` on the tiny dataset's tasks with a trained checkpoint, with EMT itself (which must
reproduce its references), task selection by site group and the group success rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ase.calculators.emt import EMT

from equiformer_calc.workflows.adsorbml import _adsorbml_groups, relax_benchmark, select_tasks


@pytest.mark.slow
def test_relax_benchmark_runs_on_two_tasks(
    trained: tuple[Path, dict[str, Any]], data_dir: Path, tmp_path: Path
) -> None:
    """Through its one entry point, ``equiformer-calc adsorbml``."""
    from equiformer_calc.cli import main

    status = main(["adsorbml", str(trained[0] / "best.safetensors"), str(data_dir), "--steps", "25",
                   "--out", str(tmp_path / "rb"), "--no-progress"])
    assert status == 0 and (tmp_path / "rb" / "relax_parity.png").is_file()
    result = json.loads((tmp_path / "rb" / "relax_benchmark.json").read_text())
    summary = result["summary"]
    assert summary["max_steps"] == 25
    assert summary["n_tasks"] == 2 == len(result["tasks"])
    assert summary["adsorbml"]["n_groups"] == len(result["groups"])
    if summary["adsorbml"]["n_multi_site_groups"] == 0:
        assert summary["adsorbml"]["success_rate_multi_site"] is None
        assert "no group has more than one site" in summary["adsorbml"]["note"]
    for task in result["tasks"]:
        if task["error"] is None:
            assert np.isfinite(task["e_model"]) and np.isfinite(task["e_ref_sp"])
            assert task["e_ads_ref_sp"] - task["e_ads_ref"] == pytest.approx(task["error_ref_sp"])
        else:
            assert task["anomalies"] == ["failed"]


def _formula_elements(formula: str) -> list[str]:
    from ase.symbols import string2symbols

    return string2symbols(formula)


@pytest.mark.slow
def test_relax_benchmark_with_emt_reproduces_its_references(data_dir: Path) -> None:
    result = relax_benchmark(EMT(), data_dir)
    summary = result["summary"]
    assert summary["n_failed"] == 0 and summary["converged_fraction"] == 1.0
    assert summary["relaxed_energy_mae"] < 1e-4 and summary["ref_sp_mae"] < 1e-4
    assert summary["adsorption_energy_mae"] < 1e-4
    assert summary["within_0.1eV"] == 1.0 and summary["adsorbml"]["success_rate_all_groups"] == 1.0
    # gas references relaxed by the same calculator on both sides: the same numbers
    assert summary["reference"] == "emt" and summary["adsorption_energy_gas_mae"] < 1e-4
    assert summary["best_site_within_0.1eV"] == 1.0
    mu = summary["gas_potentials_reference"]
    assert set(mu) == {"H", "O", "C", "N"} and summary["gas_potentials_model"] == pytest.approx(mu, abs=1e-6)
    for task in result["tasks"]:  # gas-referenced = slab-referenced minus the adsorbate's element references
        atoms_mu = task["e_ads_ref"] - task["e_ads_gas_ref"]
        assert atoms_mu == pytest.approx(sum(mu[el] for el in _formula_elements(task["adsorbate"])), abs=1e-9)


def test_select_tasks_keeps_site_groups_together() -> None:
    records = [
        {"metal": "Cu", "facet": "fcc111", "adsorbate": "H"},
        {"metal": "Pt", "facet": "fcc100", "adsorbate": "O"},
        {"metal": "Cu", "facet": "fcc111", "adsorbate": "H"},
        {"metal": "Ag", "facet": "fcc110", "adsorbate": "N"},
        {"metal": "Pt", "facet": "fcc100", "adsorbate": "O"},
        {"metal": "Cu", "facet": "fcc111", "adsorbate": "H"},
    ]
    assert select_tasks(records) == list(range(6))
    assert select_tasks(records, 3) == [0, 2, 5]
    assert select_tasks(records, 5) == [0, 1, 2, 4, 5]
    assert select_tasks(records, 4) == [0, 1, 2, 5]


def test_adsorbml_group_success() -> None:
    def task(site: str, model: float, emt_sp: float, emt_ref: float, flags: list[str] | None = None) -> dict[str, Any]:
        return {"metal": "Cu", "facet": "fcc111", "adsorbate": "O", "site": site, "e_ads_model": model,
                "e_ads_ref_sp": emt_sp, "e_ads_ref": emt_ref, "anomalies": flags or []}

    # the model ranks 'fcc' lowest and EMT confirms it is within 0.1 eV of EMT's best site
    good = _adsorbml_groups([task("ontop", -1.0, -1.0, -1.0), task("fcc", -2.0, -1.95, -2.0)])[0]
    assert good["success"] and good["model_choice"] == "fcc" and good["ref_best_site"] == "fcc"
    # the model prefers 'ontop', which EMT puts 1 eV above its minimum
    bad = _adsorbml_groups([task("ontop", -3.0, -1.0, -1.0), task("fcc", -2.0, -2.0, -2.0)])[0]
    assert not bad["success"] and bad["model_choice"] == "ontop"
    # anomalous relaxations are not chosen
    skip = _adsorbml_groups([task("ontop", -3.0, -1.0, -1.0, ["desorbed"]), task("fcc", -2.0, -2.0, -2.0)])[0]
    assert skip["success"] and skip["model_choice"] == "fcc"
