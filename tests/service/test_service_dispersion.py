"""D3 in the service (issue 27, item 3): the term is added in the model worker, never in the server
process (a segfault of the D3 library costs a worker, not the server), elements outside D3's
parameter table are refused by name before the library is called, and the numbers are the local
calculator's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

pytest.importorskip("dftd3", reason="the [d3] extra (simple-dftd3) is not installed")

from equiformer_calc import EquiformerCalculator  # noqa: E402
from equiformer_calc.checkpoint import save_checkpoint  # noqa: E402
from equiformer_calc.model import Equiformer  # noqa: E402

from .test_service import ServerProcess, as_json, http  # noqa: E402


@pytest.fixture(scope="module")
def og_checkpoint(tmp_path_factory) -> Path:
    """A model that knows Og (the issue's reproduction: the D3 library segfaults on it)."""
    return save_checkpoint(Equiformer.from_preset("tiny", elements=["H", "O", "Og"]),
                           tmp_path_factory.mktemp("ckpt") / "og.safetensors")


@pytest.fixture(scope="module")
def server(og_checkpoint, tmp_path_factory):
    proc = ServerProcess(og_checkpoint, tmp_path_factory.mktemp("logs") / "d3.log", "--dtype", "float64",
                         "--dispersion", "d3bj", "--xc", "pbe", "--no-access-log", env={"EQUIFORMER_CALC_TOKEN": ""})
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def test_d3_runs_in_the_worker_and_matches_the_local_calculator(server, og_checkpoint):
    assert "model calls in a worker process, d3bj (xc=pbe) dispersion in a worker process" in server.log()
    info = http(server.url + "/v1/models", token=None)[1]["models"][0]
    assert info["dispersion"] == "d3bj (xc=pbe)"
    atoms = molecule("H2O")
    status, body, _ = http(server.url + "/v1/predict", {"structures": [as_json(atoms)]}, token=None)
    assert status == 200, body
    local = EquiformerCalculator(str(og_checkpoint), dtype="float64", dispersion="d3bj", xc="pbe")
    expected = local.predict([atoms])[0]
    assert body["results"][0]["energy"] == pytest.approx(expected["energy"], abs=1e-9)
    np.testing.assert_allclose(body["results"][0]["forces"], expected["forces"], atol=1e-9, rtol=0)


def test_elements_outside_d3s_table_are_refused_by_name(server):
    og2 = Atoms("Og2", positions=[[0, 0, 0], [3, 0, 0]])
    status, body, _ = http(server.url + "/v1/predict", {"structures": [as_json(molecule("H2O")), as_json(og2)]},
                           token=None)
    assert status == 422 and body["error"]["type"] == "unsupported_element", body
    assert body["error"]["message"].startswith("structure 1: D3 dispersion has no parameters for Og")
    assert server.proc.poll() is None and "worker_crashed" not in server.log() and "killed by" not in server.log()
    assert http(server.url + "/v1/predict", {"structures": [as_json(molecule("H2O"))]}, token=None)[0] == 200
