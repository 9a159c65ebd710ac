"""The service's plumbing against real processes: ``/metrics`` (prometheus_client) scraped from a
running server and parsed with ``prometheus_client.parser``, and the remote calculator's httpcore
transport (pooling across threads, retries on connection errors and 503 only, a BFGS relaxation
that survives a SIGKILL and restart of its server).

One server process of its own (float64, token, ``--max-queued-requests 1`` so that a second
concurrent request is answered 503, ``--max-batch-atoms 64`` so that a large request takes a
second or more); the restart test kills and restarts it on the same port.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.optimize import BFGS
from prometheus_client.parser import text_string_to_metric_families

from equiformer_calc.calculators.local import EquiformerCalculator
from equiformer_calc.checkpoint import save_checkpoint
from equiformer_calc.service import (
    AuthenticationError,
    RemoteEquiformerCalculator,
    RequestTooLargeError,
    ServerRejectedError,
    ServerUnavailableError,
)

from equiformer_calc.service.client import _decode_json, _encode, atoms_to_json

from ..helpers import make_model, molecule_system, slab_with_adsorbate
from .test_service import ServerProcess, as_json, free_port, http, metric_values, serve_in_thread

TOKEN = "transport-token"


def scrape(url: str, token: str | None = TOKEN) -> dict[str, float]:
    """``GET /metrics`` parsed by prometheus_client: ``{'name{label="v",...}': value}`` (labels
    sorted; unlabelled samples under their bare name)."""
    status, text, headers = http(url + "/metrics", token=token)
    assert status == 200, text
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    return metric_values(text)


def delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


PREDICT_200 = 'equiformer_http_requests_total{path="/v1/predict",status="200"}'


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(make_model(0), tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="module")
def srv(checkpoint, tmp_path_factory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        checkpoint, tmp_path_factory.mktemp("logs") / "transport.log", "--dtype", "float64",
        "--max-batch-atoms", "64", "--max-queued-requests", "1", "--max-atoms-per-structure", "200",
        "--no-access-log", env={"EQUIFORMER_CALC_TOKEN": TOKEN},
    )
    try:
        yield process.wait_ready()
    finally:
        process.stop()


@pytest.fixture(scope="module")
def local(checkpoint) -> EquiformerCalculator:
    return EquiformerCalculator(str(checkpoint), dtype="float64")


def assert_same(got: dict[str, Any], expected: dict[str, Any], atol: float = 1e-5) -> None:
    for key in ("energy", "forces"):
        np.testing.assert_allclose(np.asarray(got[key]), np.asarray(expected[key]), atol=atol, rtol=0, err_msg=key)


# ------------------------------------------------------------------------------------ /metrics
def test_scraped_metrics_follow_the_requests(srv):
    before = scrape(srv.url)
    for _ in range(3):
        status, body, _ = http(srv.url + "/v1/predict", {"structures": [as_json(molecule("H2O"))]}, token=TOKEN)
        assert status == 200, body
    assert http(srv.url + "/v1/predict", "{", token=TOKEN)[0] == 400
    after = scrape(srv.url)

    assert delta(after, before, PREDICT_200) == 3
    assert delta(after, before, 'equiformer_http_requests_total{path="/v1/predict",status="400"}') == 1
    assert delta(after, before, 'equiformer_http_errors_total{type="invalid_json"}') == 1
    assert delta(after, before, 'equiformer_http_requests_total{path="/metrics",status="200"}') == 1  # `before`
    # one model call per sequential request, 3 atoms each
    assert delta(after, before, "equiformer_structures_total") == 3
    assert delta(after, before, "equiformer_atoms_total") == 9
    assert delta(after, before, "equiformer_batch_requests_count") == 3
    assert delta(after, before, "equiformer_batch_requests_sum") == 3
    assert delta(after, before, 'equiformer_batch_atoms_bucket{le="16.0"}') == 3
    assert delta(after, before, 'equiformer_batch_atoms_bucket{le="+Inf"}') == 3
    # the latency histogram saw all four POSTs; its buckets are cumulative
    assert delta(after, before, "equiformer_predict_latency_seconds_count") == 4
    assert delta(after, before, "equiformer_predict_latency_seconds_sum") > 0
    bounds = sorted((float(k.split('le="')[1].rstrip('"}')), v) for k, v in after.items()
                    if k.startswith("equiformer_predict_latency_seconds_bucket"))
    assert len(bounds) == 14 and bounds[-1] == (float("inf"), after["equiformer_predict_latency_seconds_count"])
    assert all(a[1] <= b[1] for a, b in zip(bounds, bounds[1:]))
    # gauges and the process metrics of the server process
    assert after["equiformer_queue_depth"] == 0
    assert after["equiformer_uptime_seconds"] > before["equiformer_uptime_seconds"] > 0
    assert after["process_resident_memory_bytes"] > 50e6  # a process that has imported torch
    assert after["process_cpu_seconds_total"] > 0 and after["process_open_fds"] > 0
    assert any(k.startswith("python_info{") for k in after)


def test_metrics_types_auth_and_openmetrics(srv):
    assert http(srv.url + "/metrics", token=None)[0] == 401
    status, text, _ = http(srv.url + "/metrics", token=TOKEN)
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    for name in ("equiformer_http_requests", "equiformer_http_errors", "equiformer_structures"):
        assert types[name] == "counter", name
    for name in ("equiformer_predict_latency_seconds", "equiformer_batch_requests", "equiformer_batch_atoms"):
        assert types[name] == "histogram", name
    assert types["equiformer_queue_depth"] == "gauge"
    # a scraper asking for OpenMetrics gets it (and it parses)
    import urllib.request

    from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families

    req = urllib.request.Request(srv.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}",
                                                                "Accept": "application/openmetrics-text"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.headers["content-type"].startswith("application/openmetrics-text")
        names = {f.name for f in openmetrics_families(r.read().decode())}
    assert {"equiformer_http_requests", "equiformer_batch_atoms", "process_resident_memory_bytes"} <= names


def test_two_apps_in_one_process_keep_their_own_metrics(checkpoint):
    from prometheus_client import REGISTRY

    from equiformer_calc.checkpoint import load_checkpoint
    from equiformer_calc.predictor import Predictor
    from equiformer_calc.service.app import create_app

    # with one shared registry the second app would raise 'Duplicated timeseries'
    apps = [create_app(Predictor(load_checkpoint(checkpoint)), model_id=f"app{k}") for k in range(2)]
    body = {"structures": [as_json(molecule("H2O"))]}
    with serve_in_thread(apps[0]) as url0, serve_in_thread(apps[1]) as url1:
        for _ in range(2):
            assert http(url0 + "/v1/predict", body, token=None)[0] == 200
        assert http(url1 + "/v1/predict", body, token=None)[0] == 200
        assert http(url1 + "/nowhere", token=None)[0] == 404
        m0, m1 = scrape(url0, token=None), scrape(url1, token=None)
    assert m0[PREDICT_200] == 2 and m1[PREDICT_200] == 1
    assert 'equiformer_http_errors_total{type="not_found"}' not in m0
    assert m1['equiformer_http_errors_total{type="not_found"}'] == 1
    assert m0["equiformer_structures_total"] == 2 and m1["equiformer_structures_total"] == 1
    assert m0["process_resident_memory_bytes"] > 0 and m1["process_resident_memory_bytes"] > 0
    # nothing went into prometheus_client's global default registry
    assert not [m.name for m in REGISTRY.collect() if m.name.startswith("equiformer_")]


# ------------------------------------------------------------------------------------ remote client
def test_4xx_answers_are_not_sent_again(srv):
    """422, 401 and 413 each reach the server exactly once, with retries enabled."""
    before = scrape(srv.url)
    calc = RemoteEquiformerCalculator(srv.url, token=TOKEN, retries=5, backoff=0.01)
    gold = Atoms("Au2U", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0]])
    gold.calc = calc
    with pytest.raises(ServerRejectedError, match="not supported") as info:
        gold.get_potential_energy()
    assert info.value.status == 422
    water = molecule("H2O")
    water.calc = RemoteEquiformerCalculator(srv.url, token="wrong", retries=5, backoff=0.01)
    with pytest.raises(AuthenticationError):
        water.get_potential_energy()
    big = bulk("Cu", "fcc", a=3.6, cubic=True) * (4, 4, 4)  # 256 atoms > 200
    big.calc = calc
    with pytest.raises(RequestTooLargeError, match="256 atoms"):
        big.get_potential_energy()
    after = scrape(srv.url)
    for status in ("422", "401", "413"):
        assert delta(after, before, f'equiformer_http_requests_total{{path="/v1/predict",status="{status}"}}') == 1


def test_unreachable_server_is_retried_then_a_clear_error():
    port = free_port()  # nothing listens there
    calc = RemoteEquiformerCalculator(f"http://127.0.0.1:{port}", retries=3, backoff=0.05, max_backoff=0.1)
    start = time.monotonic()
    with pytest.raises(ServerUnavailableError, match="cannot reach the equiformer-calc server") as info:
        calc.predict([molecule("H2O")])
    assert "gave up after 4 attempts" in str(info.value)
    assert time.monotonic() - start >= 0.8 * (0.05 + 0.1 + 0.1)  # the backoff was waited
    with pytest.raises(ValueError, match="retries"):
        RemoteEquiformerCalculator("http://127.0.0.1:1", retries=-1)
    with pytest.raises(ValueError, match="connect_timeout"):
        RemoteEquiformerCalculator("http://127.0.0.1:1", connect_timeout=0)


def _wait_busy(url: str, future: concurrent.futures.Future, timeout: float = 60.0) -> None:
    """Until the server has a request queued or running."""
    deadline = time.monotonic() + timeout
    while http(url + "/health", token=None)[1]["queue_depth"] < 1:
        assert time.monotonic() < deadline and not future.done(), "the slow request never showed up"
        time.sleep(0.01)


def test_503_is_retried_until_the_server_has_room(srv, local, caplog):
    """With --max-queued-requests 1, a request arriving while another runs is answered 503
    (Retry-After: 1): without retries that is the error; with retries it is answered later."""
    slow = [molecule("CH3CH2OH") for _ in range(400)]  # ~1-3 s with a 64-atom model-call budget
    water = molecule("H2O")
    before = scrape(srv.url)
    busy = RemoteEquiformerCalculator(srv.url, token=TOKEN)
    patient = RemoteEquiformerCalculator(srv.url, token=TOKEN, retries=30, backoff=0.2, max_backoff=1.0)
    impatient = RemoteEquiformerCalculator(srv.url, token=TOKEN, retries=0)
    patient.info(), impatient.info()  # /v1/models fetched before the server is busy
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        future = ex.submit(busy.predict, slow, ["energy"])
        _wait_busy(srv.url, future)
        with pytest.raises(ServerRejectedError) as info:
            impatient.predict([water])
        assert info.value.status == 503 and info.value.error_type == "overloaded"
        with caplog.at_level(logging.WARNING, logger="equiformer_calc.service.client"):
            result = patient.predict([water])[0]
        assert len(future.result(120)) == 400
    assert_same(result, local.predict([water])[0])
    assert any("503 overloaded" in r.getMessage() and "retrying" in r.getMessage() for r in caplog.records)
    after = scrape(srv.url)
    retried = delta(after, before, 'equiformer_http_requests_total{path="/v1/predict",status="503"}')
    assert retried >= 2  # the impatient one, and at least one of the patient one's attempts
    assert delta(after, before, PREDICT_200) == 2  # the slow request and the patient one


def test_one_calculator_shared_by_threads(srv, local):
    pool = [molecule("H2O"), molecule_system(), molecule("C6H6"), slab_with_adsorbate()]
    expected = local.predict(pool)
    calc = RemoteEquiformerCalculator(srv.url, token=TOKEN, retries=30, backoff=0.05, max_backoff=0.5)
    clients = [calc._http() for _ in range(2)]
    assert clients[0] is clients[1]  # one pooled client

    def work(k: int) -> int:
        for i in range(5):
            j = (k + i) % len(pool)
            assert_same(calc.predict([pool[j]])[0], expected[j])
        return k

    with concurrent.futures.ThreadPoolExecutor(6) as ex:
        assert sorted(ex.map(work, range(6))) == list(range(6))
    # 30 requests (and /v1/models) from 6 threads went over at most one keep-alive connection per thread
    assert 1 <= len(calc._http().connections) <= 6
    calc.close()


def test_non_finite_positions_get_the_servers_422():
    """orjson writes NaN as null; the body falls back to the stdlib's NaN so that the server's
    message (which atoms) reaches the user, as it did before orjson."""
    atoms = molecule("H2O")
    atoms.positions[1, 2] = np.nan
    body = _encode({"structures": [atoms_to_json(atoms)], "properties": ["energy"]})
    assert b"NaN" in body and b"null" not in body
    finite = molecule("H2O")
    assert b"NaN" not in _encode({"structures": [atoms_to_json(finite)], "properties": ["energy"]})


def test_nan_positions_through_the_remote_calculator(srv):
    atoms = molecule("H2O")
    atoms.positions[2, 0] = np.inf
    atoms.calc = RemoteEquiformerCalculator(srv.url, token=TOKEN, retries=3, backoff=0.01)
    with pytest.raises(ServerRejectedError, match=r"NaN or inf \(atoms \[2\]\)") as info:
        atoms.get_potential_energy()
    assert info.value.status == 422 and info.value.error_type == "invalid_structure"


def test_request_floats_survive_exactly_and_non_finite_answers_are_read():
    rng = np.random.default_rng(3)
    atoms = Atoms("H40", positions=rng.normal(0, 1, (40, 3)) * 10.0 ** rng.integers(-12, 4, (40, 1)),
                  cell=rng.normal(0, 5, (3, 3)), pbc=True)
    sent = json.loads(_encode({"structures": [atoms_to_json(atoms)], "properties": ["energy"]}))["structures"][0]
    assert np.array_equal(np.array(sent["positions"]), atoms.positions)  # bit for bit
    assert np.array_equal(np.array(sent["cell"]), atoms.cell.array)
    # the server writes a diverged model's numbers with the stdlib's json.dumps (NaN, Infinity)
    answer = json.dumps({"results": [{"energy": float("nan"), "forces": [[float("inf"), 0.0, -1.5]]}]}).encode()
    decoded = RemoteEquiformerCalculator._decode(200, answer, "http://x/v1/predict")
    assert np.isnan(decoded["results"][0]["energy"]) and decoded["results"][0]["forces"][0][0] == float("inf")
    assert _decode_json(b"") is None and _decode_json(b"<html>") is None


@pytest.mark.slow
def test_bfgs_survives_a_server_killed_and_restarted_mid_relaxation(srv, local, caplog):
    """A BFGS relaxation is paused after its second step with its keep-alive connection open; the
    server is SIGKILLed while it works on another client's long request, then started again on
    the same port; the relaxation goes on. Both clients retry (the relaxation: connection refused
    while the server starts; the other: its connection dropped mid-request) and get the answers an
    undisturbed server gives."""
    steps = 10

    def relax(calc: Any, observer: Any = None) -> tuple[np.ndarray, float, int]:
        atoms = slab_with_adsorbate()
        atoms.calc = calc
        opt = BFGS(atoms, logfile=None)
        if observer is not None:
            opt.attach(observer)
        opt.run(fmax=1e-4, steps=steps)
        return atoms.positions.copy(), atoms.get_potential_energy(), opt.nsteps

    pos_ref, e_ref, n_ref = relax(RemoteEquiformerCalculator(srv.url, token=TOKEN))
    pos_local, e_local, _ = relax(local)
    np.testing.assert_allclose(pos_ref, pos_local, atol=1e-5)
    assert e_ref == pytest.approx(e_local, abs=1e-5) and n_ref == steps
    victim_structures = [molecule("CH3CH2OH") for _ in range(400)]  # ~1-3 s on this server
    victim_expected = local.predict(victim_structures[:1], properties=["energy"])[0]["energy"]

    paused, resume = threading.Event(), threading.Event()
    calls = 0

    def pause_after_second_step() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            paused.set()
            assert resume.wait(120)

    def patient() -> RemoteEquiformerCalculator:
        return RemoteEquiformerCalculator(srv.url, token=TOKEN, retries=40, backoff=0.25, max_backoff=4.0)

    old_pid = srv.proc.pid
    with caplog.at_level(logging.WARNING, logger="equiformer_calc.service.client"), \
            concurrent.futures.ThreadPoolExecutor(2) as ex:
        relaxation = ex.submit(relax, patient(), pause_after_second_step)
        assert paused.wait(120)
        victim = ex.submit(patient().predict, victim_structures, ["energy"])
        _wait_busy(srv.url, victim)  # the relaxation is paused: the request in the server is the victim's
        srv.kill_and_restart()
        resume.set()
        pos, energy, n = relaxation.result(180)
        victim_results = victim.result(180)
    assert srv.proc.pid != old_pid and srv.proc.poll() is None
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert any("was dropped" in m for m in retries), retries  # the victim, killed mid-request
    assert any("cannot reach the equiformer-calc server" in m for m in retries), retries
    assert n == n_ref
    np.testing.assert_allclose(pos, pos_ref, atol=1e-8, rtol=0)
    assert energy == pytest.approx(e_ref, abs=1e-8)
    assert len(victim_results) == 400
    assert all(r["energy"] == pytest.approx(victim_expected, abs=1e-5) for r in victim_results)
    # the restarted server answered both (a fresh process: its counters started from zero)
    assert scrape(srv.url)[PREDICT_200] >= 2
