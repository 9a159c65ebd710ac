"""``POST /v1/vibrations`` of the real app (uvicorn in a thread of this process, the shipped default
checkpoint in float64) against :func:`equiformer_calc.workflows.vibrations.vibrate` with the same
model, and its 4xx answers for bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from ase import Atoms
from ase.build import add_adsorbate, fcc111, molecule
from ase.io import read, write

from equiformer_calc import EquiformerCalculator
from equiformer_calc.workflows.vibrations import vibrate

from .test_service import TOKEN, ServerProcess, as_json, http, serve_in_thread

MAX_ATOMS_PER_REQUEST = 400


@pytest.fixture(scope="module")
def url():
    from equiformer_calc import ModelSettings
    from equiformer_calc.service.app import create_app

    settings = ModelSettings(checkpoint="pbe-distilled-small", dtype="float64")
    app = create_app(settings, isolate=False, max_atoms_per_request=MAX_ATOMS_PER_REQUEST)
    with serve_in_thread(app) as address:
        yield address + "/v1/vibrations"


@pytest.fixture(scope="module")
def calc():
    return EquiformerCalculator(dtype="float64")


def co_slab() -> Atoms:
    slab = fcc111("Cu", (2, 2, 2), vacuum=5.0)
    add_adsorbate(slab, "C", 1.9, "ontop")
    add_adsorbate(slab, "O", 3.05, "ontop")
    slab.rattle(0.02, seed=1)
    return slab


def post(url: str, atoms: Atoms | list[Atoms], query: str = "", **kwargs):
    structures = [as_json(a) for a in (atoms if isinstance(atoms, list) else [atoms])]
    return http(url + query, {"structures": structures}, token=None, **kwargs)


def test_equals_the_workflow(url, calc):
    """Default selection (the adsorbate), delta 0.01, nfree 2: the workflow's numbers, one batched job."""
    atoms = co_slab()
    status, body, _ = post(url, atoms)
    assert status == 200, body
    ours = vibrate(atoms, calculator=calc, progress=False)
    assert body["indices"] == ours.indices == [8, 9]
    np.testing.assert_allclose(body["frequencies_cm-1"], ours.frequencies, atol=1e-6)
    np.testing.assert_allclose(body["hessian"], ours.hessian, atol=1e-9)
    assert body["zero_point_energy"] == pytest.approx(ours.zero_point_energy, abs=1e-9)
    assert body["energy"] == pytest.approx(ours.energy, abs=1e-9)
    assert body["n_calls"] == 1 and body["n_evaluations"] == 13
    assert body["delta"] == 0.01 and body["nfree"] == 2
    assert len(body["kinds"]) == 6 and body["model"]["dtype"] == "float64"


def test_query_settings_and_extxyz_body(url, calc):
    """An extxyz body with a mask, nfree 4 and another delta, as the workflow with the same settings."""
    atoms = co_slab()
    mask = np.zeros(len(atoms), bool)
    mask[[7, 9]] = True  # a surface Cu atom and O
    atoms.info.pop("adsorbate_info", None)  # a dict: extxyz would skip it with a warning
    text = io.StringIO()
    write(text, atoms, format="extxyz")
    query = "?mask=" + ",".join("1" if m else "0" for m in mask) + "&nfree=4&delta=0.02"
    status, body, _ = http(url + query, text.getvalue(), token=None, content_type="chemical/x-extxyz")
    assert status == 200, body
    atoms = read(io.StringIO(text.getvalue()), format="extxyz")  # the positions as written (8 decimals)
    ours = vibrate(atoms, indices=mask, calculator=calc, nfree=4, delta=0.02, progress=False)
    assert body["indices"] == [7, 9] and body["n_evaluations"] == 1 + 6 * 4 and body["n_calls"] == 1
    np.testing.assert_allclose(body["frequencies_cm-1"], ours.frequencies, atol=1e-6)
    status, again, _ = post(url, atoms, "?indices=7&indices=-1&nfree=4&delta=0.02")  # repeated, negative index
    assert status == 200 and again["indices"] == [7, 9]
    np.testing.assert_allclose(again["frequencies_cm-1"], ours.frequencies, atol=1e-6)


def test_imaginary_modes_are_reported(url, calc):
    """Linear water is a saddle of the bend: imaginary modes come back as negative frequencies, by
    magnitude under imaginary_cm-1, kind 'imaginary', and in the notes."""
    linear = molecule("H2O")
    linear.positions = [[0, 0, 0], [0.97, 0, 0], [-0.97, 0, 0]]
    status, body, _ = post(url, linear, "?indices=0,1,2")
    assert status == 200, body
    ours = vibrate(linear, calculator=calc, progress=False)
    f = np.array(body["frequencies_cm-1"])
    np.testing.assert_allclose(f, ours.frequencies, atol=1e-6)
    assert (f < -50).sum() == 2  # the degenerate bend
    np.testing.assert_allclose(body["imaginary_cm-1"], -ours.imaginary, atol=1e-6)
    assert [k for k, x in zip(body["kinds"], f) if x < 0] == ["imaginary"] * int((f < 0).sum())
    assert any("imaginary" in n for n in body["notes"])
    assert body["zero_point_energy"] == pytest.approx(ours.zero_point_energy, abs=1e-9)


@pytest.mark.parametrize("query, status, kind, words", [
    ("?indices=99", 422, "invalid_request", "out of range"),
    ("?indices=8,8", 422, "invalid_request", "repeat"),
    ("?indices=C", 422, "invalid_request", "integers"),
    ("?indices=8&mask=1,0", 422, "invalid_request", "not both"),
    ("?mask=1,0,1", 422, "invalid_request", "mask needs 10 entries"),
    ("?mask=yes", 422, "invalid_request", "0/1"),
    ("?indices=", 422, "invalid_request", "empty"),
    ("?delta=0", 422, "invalid_request", "delta must lie in"),
    ("?delta=0.5", 422, "invalid_request", "delta must lie in"),
    ("?delta=nan", 422, "invalid_request", "finite"),
    ("?delta=x", 422, "invalid_request", "not a number"),
    ("?nfree=3", 422, "invalid_request", "nfree must be 2 or 4"),
    ("?nfree=2&nfree=4", 422, "invalid_request", "once"),
    ("?indexes=8", 422, "invalid_request", "unknown query parameter"),
    ("?mask=" + ",".join(["1"] * 10), 413, "too_large", "61 evaluations of 10 atoms"),
])
def test_bad_settings(url, query, status, kind, words):
    got, body, _ = post(url, co_slab(), query)
    assert got == status and body["error"]["type"] == kind, body
    assert words in body["error"]["message"], body


def test_bad_structures(url):
    status, body, _ = post(url, [co_slab(), co_slab()])
    assert status == 422 and "one structure, got 2" in body["error"]["message"], body
    status, body, _ = post(url, fcc111("Cu", (2, 2, 2), vacuum=5.0))
    assert status == 422 and "no adsorbate" in body["error"]["message"], body
    status, body, _ = post(url, Atoms("XeO", positions=[[0, 0, 0], [0, 0, 2.0]]))
    assert status == 422 and body["error"]["type"] == "unknown_element", body
    status, body, _ = http(url, {"structures": [{"numbers": [8], "positions": [[0, 0]]}]}, token=None)
    assert status == 422 and body["error"]["type"] in ("invalid_request", "invalid_structure"), body
    status, body, _ = post(url, Atoms("CO", positions=[[0, 0, 0], [0, 0, 0.05]]))
    assert status == 422 and body["error"]["type"] == "invalid_structure", body


def test_documented_in_openapi(url):
    status, schema, _ = http(url.replace("/v1/vibrations", "/openapi.json"), token=None)
    assert status == 200
    op = schema["paths"]["/v1/vibrations"]["post"]
    assert {p["name"] for p in op["parameters"]} == {"indices", "mask", "delta", "nfree", "soft_threshold"}
    assert "chemical/x-extxyz" in op["requestBody"]["content"]


@pytest.mark.slow
def test_served_by_the_cli_with_its_model_worker(calc, tmp_path):
    """``equiformer-calc serve`` (model in a worker process, bearer token): the same numbers; 401 without the token."""
    server = ServerProcess("pbe-distilled-small", tmp_path / "serve.log", "--dtype", "float64", "--no-access-log",
                           env={"EQUIFORMER_CALC_TOKEN": TOKEN})
    try:
        server.wait_ready()
        assert "model calls in a worker process" in server.log()
        url = server.url + "/v1/vibrations"
        atoms = co_slab()
        status, body, _ = http(url, {"structures": [as_json(atoms)]})
        assert status == 200, body
        ours = vibrate(atoms, calculator=calc, progress=False)
        np.testing.assert_allclose(body["frequencies_cm-1"], ours.frequencies, atol=1e-6)
        assert body["n_calls"] == 1
        status, body, _ = http(url, {"structures": [as_json(atoms)]}, token=None)
        assert status == 401 and body["error"]["type"] == "unauthorized"
    finally:
        server.stop()

