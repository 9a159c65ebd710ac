"""The HTTP inference service: the real server (``python -m equiformer_calc.cli serve``) in a
subprocess on 127.0.0.1, the remote calculator against it, and the batcher on its own.

Two server processes are launched at once (their start-up is dominated by importing torch):
``server`` (float64, token, small limits) for correctness and error handling, and ``aux``
(float32, no token, tiny model-call budget so that a large request takes ~1-2 s) for the client
timeout and graceful-shutdown tests.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.io import write
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS
from prometheus_client.parser import text_string_to_metric_families

from equiformer_calc.calculators.local import EquiformerCalculator
from equiformer_calc.checkpoint import save_checkpoint
from equiformer_calc.graph import Structure, StructureError
from equiformer_calc.service import (
    AuthenticationError,
    RemoteEquiformerCalculator,
    RemoteTimeoutError,
    RequestTooLargeError,
    ServerRejectedError,
    ServerUnavailableError,
)
from equiformer_calc.service.batcher import Batcher, RequestTimeoutError

from ..helpers import ELEMENTS, SYSTEMS, bulk_cell, make_model, molecule_system, slab_with_adsorbate

TOKEN = "test-token-123"
ROOT = Path(__file__).resolve().parents[2]
MAX_ATOMS_PER_STRUCTURE = 200
MAX_ATOMS_PER_REQUEST = 400
MAX_BODY_BYTES = int(0.25 * (1 << 20))


# ------------------------------------------------------------------------------------ helpers
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``equiformer-calc serve`` in a subprocess; its log goes to a file shown on failure."""

    def __init__(self, checkpoint: Path, log_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        cmd = [sys.executable, "-m", "equiformer_calc.cli", "serve", "--checkpoint", str(checkpoint),
               "--host", "127.0.0.1", "--port", str(self.port), "--threads", "1", *args]
        self.cmd, self.env = cmd, {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env)
        self._ready = False

    def kill_and_restart(self) -> None:
        """SIGKILL the server and start it again on the same port (not waiting for it)."""
        self.proc.kill()
        self.proc.wait(30)
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env)
        self._ready = False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> "ServerProcess":
        if self._ready:
            return self
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        self._ready = True
                        return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"server not healthy after {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def http(url: str, body: Any = None, *, token: str | None = TOKEN, content_type: str = "application/json",
         method: str | None = None, timeout: float = 60.0) -> tuple[int, Any, dict[str, str]]:
    """One request; returns (status, decoded JSON or text, headers) for success and errors alike."""
    data = None
    if body is not None:
        if isinstance(body, bytes):
            data = body
        else:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"))
    if data is not None:
        req.add_header("Content-Type", content_type)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw, headers = r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        status, raw, headers = e.code, e.read(), dict(e.headers)
    text = raw.decode()
    try:
        return status, json.loads(text), headers
    except json.JSONDecodeError:
        return status, text, headers


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a thread of this process; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


def as_json(atoms: Atoms) -> dict[str, Any]:
    return {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
            "cell": atoms.cell.array.tolist(), "pbc": atoms.pbc.tolist()}


def water() -> Atoms:
    return molecule("H2O")


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(make_model(0), tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="module")
def launched(checkpoint, tmp_path_factory):
    """Start both server processes at once (imports dominate start-up); always terminate them."""
    logs = tmp_path_factory.mktemp("logs")
    servers: dict[str, ServerProcess] = {}
    try:
        servers["main"] = ServerProcess(
            checkpoint, logs / "main.log", "--dtype", "float64", "--max-wait-ms", "20", "--max-batch-atoms", "512",
            "--max-atoms-per-structure", str(MAX_ATOMS_PER_STRUCTURE), "--max-atoms-per-request",
            str(MAX_ATOMS_PER_REQUEST), "--max-body-mb", "0.25", "--no-access-log", "--keep-alive", "1",
            env={"EQUIFORMER_CALC_TOKEN": TOKEN},  # the token comes from the environment
        )
        servers["aux"] = ServerProcess(
            checkpoint, logs / "aux.log", "--max-batch-atoms", "64", "--graceful-timeout", "60",
            env={"EQUIFORMER_CALC_TOKEN": ""},
        )
        yield servers
    finally:
        for s in servers.values():
            s.stop()


@pytest.fixture(scope="module")
def server(launched) -> ServerProcess:
    return launched["main"].wait_ready()


@pytest.fixture(scope="module")
def aux(launched) -> ServerProcess:
    return launched["aux"].wait_ready()


@pytest.fixture(scope="module")
def local(checkpoint) -> EquiformerCalculator:
    return EquiformerCalculator(str(checkpoint), dtype="float64")


@pytest.fixture
def remote(server) -> RemoteEquiformerCalculator:
    calc = RemoteEquiformerCalculator(server.url, token=TOKEN, timeout=60)
    yield calc
    calc.close()


def assert_same(remote_result: dict[str, Any], local_result: dict[str, Any], keys=("energy", "forces")) -> None:
    for key in keys:
        np.testing.assert_allclose(np.asarray(remote_result[key]), np.asarray(local_result[key]), atol=1e-5, rtol=0,
                                   err_msg=key)


# ------------------------------------------------------------------------------------ endpoints
def test_health_is_open_and_models_describe_the_checkpoint(server):
    status, body, _ = http(server.url + "/health", token=None)
    assert status == 200 and body["status"] == "ok"
    status, body, _ = http(server.url + "/v1/models", token=None)
    assert status == 401 and body["error"]["type"] == "unauthorized"
    status, body, _ = http(server.url + "/v1/models")
    assert status == 200
    (info,) = body["models"]
    assert info["id"] == "tiny" and info["elements"] == ELEMENTS and info["cutoff"] == 5.0
    assert info["dtype"] == "float64"
    assert info["metadata"]["config"]["num_blocks"] == 2
    assert info["limits"]["max_atoms_per_structure"] == MAX_ATOMS_PER_STRUCTURE
    assert info["batching"]["enabled"] is True


@pytest.mark.parametrize("kind", sorted(SYSTEMS))
def test_remote_calculator_equals_local(remote, local, kind):
    atoms = SYSTEMS[kind]()
    props = ["energy", "free_energy", "forces", "energies"] + (["stress"] if atoms.pbc.all() else [])
    atoms.calc = local
    expected = {p: atoms.calc.get_property(p, atoms) for p in props}
    atoms.calc = remote
    got = {p: atoms.calc.get_property(p, atoms) for p in props}
    assert_same(got, expected, props)
    assert np.abs(got["forces"]).max() > 1e-3
    assert set(RemoteEquiformerCalculator.implemented_properties) == set(EquiformerCalculator.implemented_properties)


def test_predict_json_many_structures_with_stress(server, local):
    structures = [bulk_cell(), bulk("Cu", "fcc", a=3.6) * (2, 1, 1), bulk_cell()]
    request = {"structures": [as_json(a) for a in structures], "properties": ["energy", "forces", "stress"]}
    status, body, _ = http(server.url + "/v1/predict", request)
    assert status == 200, body
    assert body["model"]["id"] == "tiny" and body["model"]["dtype"] == "float64"
    expected = local.predict(structures, properties=["energy", "forces", "stress"])
    assert len(body["results"]) == 3
    for got, exp, atoms in zip(body["results"], expected, structures):
        assert set(got) == {"energy", "forces", "stress"}
        assert len(got["stress"]) == 6 and np.shape(got["forces"]) == (len(atoms), 3)
        assert_same(got, exp, ("energy", "forces", "stress"))


def test_remote_predict_batches_a_list(remote, local):
    structures = [molecule_system(), slab_with_adsorbate(), water(), bulk_cell()]
    got = remote.predict(structures, properties=["energy", "forces", "energies"])
    expected = local.predict(structures, properties=["energy", "forces", "energies"])
    for g, e in zip(got, expected):
        assert_same(g, e, ("energy", "forces", "energies"))


def test_extxyz_bodies_and_field(server, local, tmp_path):
    frames = [molecule_system(), bulk_cell()]
    path = tmp_path / "frames.extxyz"
    write(path, frames, format="extxyz")
    text = path.read_text()
    expected = local.predict(frames, properties=["energy", "forces"])
    for ctype in ("chemical/x-extxyz", "text/plain"):
        status, body, _ = http(server.url + "/v1/predict?properties=energy,forces", text, content_type=ctype)
        assert status == 200, body
        for g, e in zip(body["results"], expected):
            assert_same(g, e)
    status, body, _ = http(server.url + "/v1/predict", {"extxyz": text, "properties": ["energy", "forces"]})
    assert status == 200, body
    assert_same(body["results"][1], expected[1])
    status, body, _ = http(server.url + "/v1/predict?properties=stress", text, content_type="chemical/x-extxyz")
    assert status == 422 and "structure 0" in body["error"]["message"]


@pytest.mark.slow
def test_sixteen_concurrent_clients_are_answered_correctly_and_batched(server, local):
    pool = []
    for k in range(8):
        atoms = [water(), molecule("CH3CH2OH"), molecule("C6H6"), slab_with_adsorbate()][k % 4]
        atoms.rattle(0.05, seed=k)
        pool.append(atoms)
    expected = local.predict(pool, properties=["energy", "forces"])
    before = metric_values(http(server.url + "/metrics")[1])
    barrier = threading.Barrier(16)

    def client(c: int) -> int:
        calc = RemoteEquiformerCalculator(server.url, token=TOKEN, timeout=60)
        rng = np.random.default_rng(c)
        barrier.wait()
        for _ in range(4):
            picks = rng.choice(len(pool), size=1 + c % 3).tolist()
            results = calc.predict([pool[i] for i in picks])
            for i, r in zip(picks, results):
                assert_same(r, expected[i])
        calc.close()
        return c

    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        assert sorted(ex.map(client, range(16))) == list(range(16))
    after = metric_values(http(server.url + "/metrics")[1])
    requests = after["equiformer_batch_requests_sum"] - before.get("equiformer_batch_requests_sum", 0)
    calls = after["equiformer_batch_requests_count"] - before.get("equiformer_batch_requests_count", 0)
    merged = after.get("equiformer_merged_requests_total", 0) - before.get("equiformer_merged_requests_total", 0)
    assert requests == 64
    assert calls < requests and merged > 0, (calls, merged)


def metric_values(text: str) -> dict[str, float]:
    """The samples of a Prometheus text page, parsed by prometheus_client: unlabelled ones under
    their name, labelled ones under 'name{label="value",...}' (labels sorted)."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return values


def test_metrics_are_prometheus_text(server):
    http(server.url + "/v1/predict", {"structures": [as_json(water())]})
    http(server.url + "/v1/predict", "{", token=TOKEN)
    status, _, _ = http(server.url + "/metrics", token=None)
    assert status == 401
    status, text, headers = http(server.url + "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    types = {family.name: family.type for family in text_string_to_metric_families(text)}
    for name in ("equiformer_http_requests", "equiformer_http_errors", "equiformer_batch_requests",
                 "equiformer_predict_latency_seconds", "equiformer_batch_atoms", "process_resident_memory_bytes"):
        assert name in types
    assert types["equiformer_predict_latency_seconds"] == "histogram"
    values = metric_values(text)
    buckets = [v for k, v in values.items() if k.startswith("equiformer_predict_latency_seconds_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] == values["equiformer_predict_latency_seconds_count"]
    assert values['equiformer_http_errors_total{type="invalid_json"}'] >= 1
    assert values['equiformer_http_requests_total{path="/v1/predict",status="200"}'] >= 1


def test_openapi_schema_documents_the_api(server):
    status, schema, _ = http(server.url + "/openapi.json", token=None)
    assert status == 200
    assert {"/v1/predict", "/v1/models", "/health", "/metrics"} <= set(schema["paths"])
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"application/json", "chemical/x-extxyz"} <= set(body)
    assert "structures" in schema["components"]["schemas"]["PredictRequest"]["properties"]
    assert "PredictResponse" in schema["components"]["schemas"]


# ------------------------------------------------------------------------------------ security / limits
def test_bearer_token_is_required(server):
    good = {"structures": [as_json(water())]}
    for token in (None, "wrong-token"):
        status, body, headers = http(server.url + "/v1/predict", good, token=token)
        assert status == 401 and body["error"]["type"] == "unauthorized", body
        assert headers.get("www-authenticate") == "Bearer"
    with pytest.raises(AuthenticationError, match="401"):
        RemoteEquiformerCalculator(server.url, token="wrong-token").predict([water()])
    # a client still sending a large body gets the 401 too (not a connection reset)
    status, body, _ = http(server.url + "/v1/predict", json.dumps(good) + " " * (2 << 20), token="wrong-token")
    assert status == 401 and body["error"]["message"] == "invalid bearer token"
    assert http(server.url + "/v1/predict", good)[0] == 200


def test_size_limits_give_413(server):
    big = bulk("Cu", "fcc", a=3.6, cubic=True) * (4, 4, 4)  # 256 atoms > 200
    status, body, _ = http(server.url + "/v1/predict", {"structures": [as_json(big)]})
    assert status == 413 and "structure 0 has 256 atoms" in body["error"]["message"]
    medium = bulk("Cu", "fcc", a=3.6, cubic=True) * (3, 3, 4)  # 144 atoms, x3 = 432 > 400
    status, body, _ = http(server.url + "/v1/predict", {"structures": [as_json(medium)] * 3})
    assert status == 413 and "at most 400 atoms per request" in body["error"]["message"]
    padded = json.dumps({"structures": [as_json(water())]}) + " " * MAX_BODY_BYTES
    status, body, _ = http(server.url + "/v1/predict", padded)
    assert status == 413 and "exceeds the limit" in body["error"]["message"]
    with pytest.raises(RequestTooLargeError, match="256 atoms"):
        RemoteEquiformerCalculator(server.url, token=TOKEN).predict([big])
    # the client splits a list over the per-request limit into several requests
    results = RemoteEquiformerCalculator(server.url, token=TOKEN).predict([medium] * 3, properties=["energy"])
    assert len(results) == 3 and results[0]["energy"] == pytest.approx(results[2]["energy"], abs=1e-9)


def _h2o(**changes: Any) -> dict[str, Any]:
    s = {"numbers": [8, 1, 1], "positions": [[0, 0, 0.12], [0, 0.76, -0.48], [0, -0.76, -0.48]]}
    s.update(changes)
    return s


BAD_INPUTS = {
    "malformed_json": ('{"structures": [', 400, "invalid_json", "malformed JSON"),
    "not_an_object": ([1, 2, 3], 422, "invalid_request", "object"),
    "missing_structures": ({"properties": ["energy"]}, 422, "invalid_request", "'structures'"),
    "empty_list": ({"structures": []}, 422, "invalid_request", "empty"),
    "unknown_field": ({"structures": [_h2o(velocity=[0, 0, 0])]}, 422, "invalid_request", "unknown field 'velocity'"),
    "positions_wrong_shape": ({"structures": [_h2o(positions=[[0, 0], [0, 1, 0], [1, 0, 0]])]}, 422,
                              "invalid_structure", "shape (N, 3)"),
    "count_mismatch": ({"structures": [_h2o(numbers=[8, 1])]}, 422, "invalid_structure",
                       "2 atomic numbers but 3 positions"),
    "not_a_number": ({"structures": [_h2o(positions=[[0, 0, "x"], [0, 1, 0], [1, 0, 0]])]}, 422, "invalid_request",
                     "structures[0].positions[0][2]"),
    "unknown_element": ({"structures": [_h2o(), _h2o(numbers=[8, 1, 92])]}, 422, "unknown_element",
                        "structure 1: element(s) U not supported by this model; it supports H, C, N, O, Al"),
    "nan_coordinates": ('{"structures": [{"numbers": [8, 1, 1], "positions": [[0, 0, NaN], [0, 1, 0], [1, 0, 0]]}]}',
                        422, "invalid_structure", "NaN"),
    "degenerate_cell": ({"structures": [_h2o(cell=[[3, 0, 0], [6, 0, 0], [0, 0, 3]], pbc=True)]}, 422,
                        "invalid_structure", "degenerate"),
    "pbc_without_cell": ({"structures": [_h2o(pbc=True)]}, 422, "invalid_structure", "cell vector 0 is zero"),
    "empty_structure": ({"structures": [{"numbers": [], "positions": []}]}, 422, "invalid_structure", "no atoms"),
    "overlapping_atoms": ({"structures": [_h2o(), _h2o(positions=[[0, 0, 0], [0, 0, 0.01], [1, 0, 0]])]}, 422,
                          "invalid_structure", "structure 1: atoms 0 (O) and 1 (H) overlap"),
    "stress_non_periodic": ({"structures": [as_json(bulk_cell()), _h2o()], "properties": ["energy", "stress"]},
                            422, "stress_unavailable", "structure 1, which is not periodic"),
    "unknown_property": ({"structures": [_h2o()], "properties": ["hessian"]}, 422, "invalid_request", "properties[0]"),
    "bad_extxyz": ({"extxyz": "2\nx\nCu 0 0\nCu 0 0\n"}, 400, "invalid_extxyz", "could not parse the extxyz"),
    "truncated_extxyz": ({"extxyz": "3\nx\nCu 0 0 0\n"}, 422, "invalid_extxyz",
                         "frame 0 declares 3 atoms but only 1 line(s) follow its header"),
    "empty_body": ("", 400, "invalid_json", "empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_4xx_naming_the_problem(server, case):
    body, status, error_type, needle = BAD_INPUTS[case]
    got_status, got, _ = http(server.url + "/v1/predict", body if body != "" else b"", method="POST")
    assert got_status == status, got
    assert got["error"]["type"] == error_type, got
    assert needle in got["error"]["message"], got["error"]["message"]


def test_unsupported_content_type_and_unknown_path(server):
    status, body, _ = http(server.url + "/v1/predict", b"\x89PNG", content_type="image/png")
    assert status == 415 and "image/png" in body["error"]["message"]
    status, body, _ = http(server.url + "/v2/nothing")
    assert status == 404 and body["error"]["type"] == "not_found"
    status, body, _ = http(server.url + "/v1/predict", method="GET")
    assert status == 405 and body["error"]["type"] == "method_not_allowed"


def test_server_keeps_serving_after_bad_inputs(server, local):
    for body, *_ in BAD_INPUTS.values():
        http(server.url + "/v1/predict", body if body != "" else b"", method="POST")
    assert http(server.url + "/health", token=None)[0] == 200
    atoms = molecule_system()
    status, body, _ = http(server.url + "/v1/predict", {"structures": [as_json(atoms)]})
    assert status == 200
    assert_same(body["results"][0], local.predict([atoms])[0])
    assert server.proc.poll() is None


def test_one_bad_request_does_not_fail_concurrent_good_ones(server, local):
    good = molecule_system()
    expected = local.predict([good])[0]
    bad_body = {"structures": [as_json(good), _h2o(positions=[[0, 0, 0], [0, 0, 0.01], [1, 0, 0]])]}

    def send(k: int) -> tuple[int, Any]:
        body = bad_body if k % 4 == 0 else {"structures": [as_json(good)]}
        status, answer, _ = http(server.url + "/v1/predict", body)
        return k, (status, answer)

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        for k, (status, answer) in ex.map(send, range(8)):
            if k % 4 == 0:
                assert status == 422 and "structure 1: atoms 0 (O) and 1 (H) overlap" in answer["error"]["message"]
            else:
                assert status == 200
                assert_same(answer["results"][0], expected)


# ------------------------------------------------------------------------------------ remote calculator
def test_remote_client_errors_are_clear(server):
    port = free_port()  # nothing listens there
    calc = RemoteEquiformerCalculator(f"http://127.0.0.1:{port}", timeout=5, retries=0)
    with pytest.raises(ServerUnavailableError, match="cannot reach the equiformer-calc server"):
        calc.predict([water()])
    atoms = water()
    atoms.calc = calc
    with pytest.raises(ServerUnavailableError):
        atoms.get_potential_energy()
    remote = RemoteEquiformerCalculator(server.url, token=TOKEN)
    gold = Atoms("Au2U", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0]])
    gold.calc = remote
    with pytest.raises(ServerRejectedError, match="element\\(s\\) U not supported") as info:
        gold.get_potential_energy()
    assert info.value.status == 422 and info.value.error_type == "unknown_element"
    atoms = water()
    atoms.calc = remote
    with pytest.raises(PropertyNotImplementedError, match="periodic in all three"):
        atoms.get_stress()
    with pytest.raises(ValueError, match="url"):
        RemoteEquiformerCalculator("ftp://example")


def test_client_timeout_is_a_clear_error(aux):
    many = [molecule("CH3CH2OH") for _ in range(300)]  # ~1-2 s with a 64-atom model-call budget
    calc = RemoteEquiformerCalculator(aux.url, timeout=0.2, retries=5, backoff=0.01)
    before = metric_values(http(aux.url + "/metrics")[1])
    with pytest.raises(RemoteTimeoutError, match="within 0.2 s"):
        calc.predict(many, properties=["energy"])
    # a read timeout is not sent again: the server finishes the one request it got
    # (it is parsed off the event loop before it is queued: wait for its answer, not for the queue)
    key = 'equiformer_http_requests_total{path="/v1/predict",status="200"}'
    deadline = time.monotonic() + 60
    while metric_values(http(aux.url + "/metrics")[1]).get(key, 0) == before.get(key, 0):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # a re-sent request would have been answered by now
    after = metric_values(http(aux.url + "/metrics")[1])
    assert after[key] - before.get(key, 0) == 1


@pytest.mark.slow
def test_remote_bfgs_and_md_follow_the_local_trajectory(remote, local):
    def relax(calc) -> tuple[float, np.ndarray]:
        atoms = slab_with_adsorbate()
        atoms.calc = calc
        BFGS(atoms, logfile=None).run(fmax=1e-3, steps=4)
        return atoms.get_potential_energy(), atoms.positions.copy()

    e_remote, pos_remote = relax(remote)
    e_local, pos_local = relax(local)
    assert e_remote == pytest.approx(e_local, abs=1e-5)
    np.testing.assert_allclose(pos_remote, pos_local, atol=1e-5)

    def md(calc) -> tuple[np.ndarray, float]:
        atoms = molecule_system()
        atoms.calc = calc
        atoms.set_momenta(np.random.default_rng(1).normal(0, 0.3, (len(atoms), 3)))
        VelocityVerlet(atoms, timestep=0.5 * units.fs, logfile=None).run(5)
        return atoms.positions.copy(), atoms.get_total_energy()

    pos_r, etot_r = md(remote)
    pos_l, etot_l = md(local)
    np.testing.assert_allclose(pos_r, pos_l, atol=1e-5)
    assert etot_r == pytest.approx(etot_l, abs=1e-5)


def test_remote_calculator_reconnects_after_idle_keep_alive_timeout(remote, local):
    atoms = water()
    first = remote.predict([atoms])[0]
    time.sleep(1.6)  # the server (--keep-alive 1) has closed the idle connection by now
    second = remote.predict([atoms])[0]
    assert_same(first, second)
    assert_same(second, local.predict([atoms])[0])


def test_remote_calculator_pickles(remote):
    import pickle

    clone = pickle.loads(pickle.dumps(remote))
    assert clone.url == remote.url and clone.predict([water()])[0]["energy"] == pytest.approx(
        remote.predict([water()])[0]["energy"], abs=1e-12)


# ------------------------------------------------------------------------------------ shutdown
@pytest.mark.slow
def test_sigterm_lets_the_in_flight_request_finish(aux, local):
    many = [molecule("CH3CH2OH") for _ in range(300)]
    calc = RemoteEquiformerCalculator(aux.url, timeout=60)
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        future = ex.submit(calc.predict, many, ["energy"])
        deadline = time.monotonic() + 30
        while http(aux.url + "/health", token=None)[1]["queue_depth"] < 1:  # queued or running
            assert time.monotonic() < deadline and not future.done()
            time.sleep(0.02)
        aux.proc.send_signal(signal.SIGTERM)
        results = future.result(60)
    assert len(results) == 300
    expected = local.predict(many[:1], properties=["energy"])[0]["energy"]
    assert all(r["energy"] == pytest.approx(expected, abs=1e-3) for r in results)  # float32 server
    assert aux.proc.wait(30) == 0
    assert "Finished server process" in aux.log() or "server stopped" in aux.log()
    with pytest.raises(ServerUnavailableError):
        RemoteEquiformerCalculator(aux.url, timeout=5, retries=0).predict([water()])


# ------------------------------------------------------------------------------------ batcher (in-process)
class FakePredictor:
    """Energy = sum of atomic numbers; records every call; fails on a structure with Z=2."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[list[int]] = []
        self.delay = delay

    def graph(self, structure: Structure) -> None:
        if 2 in structure.numbers:
            raise StructureError("atoms 0 and 1 overlap (fake)")

    def predict(self, structures, properties=("energy", "forces")):
        self.calls.append([len(s) for s in structures])
        time.sleep(self.delay)
        for s in structures:
            self.graph(s)
        return [{"energy": float(s.numbers.sum()), "forces": np.zeros((len(s), 3)), "energies": s.numbers * 1.0}
                for s in structures]


def chain(n: int, z: int = 1) -> Structure:
    return Structure.from_arrays([z] * n, [[0.0, 0.0, 1.5 * i] for i in range(n)])


def test_batcher_merges_concurrent_jobs_and_routes_results():
    fake = FakePredictor()
    batcher = Batcher(fake, max_batch_atoms=100, max_wait_ms=300)
    try:
        futures = [batcher.submit([chain(k + 1)], ["energy"]) for k in range(5)]
        results = [f.result(10) for f in futures]
    finally:
        batcher.stop(5)
    assert fake.calls == [[1, 2, 3, 4, 5]]
    assert [r[0]["energy"] for r in results] == [1, 2, 3, 4, 5]
    assert all(set(r[0]) == {"energy"} for r in results)


def test_batcher_respects_budget_and_stress_compatibility():
    fake = FakePredictor()
    batcher = Batcher(fake, max_batch_atoms=10, max_wait_ms=200)
    try:
        jobs = [([chain(6)], ["energy"]), ([chain(3)], ["energy", "stress"]), ([chain(6)], ["energy"]),
                ([chain(3)], ["energy", "stress"]), ([chain(30)], ["energy"])]
        futures = [batcher.submit(s, p) for s, p in jobs]
        [f.result(10) for f in futures]
    finally:
        batcher.stop(5)
    assert sorted(map(sorted, fake.calls)) == sorted([[6], [3, 3], [6], [30]])


def test_batcher_falls_back_so_one_bad_job_does_not_fail_the_others():
    fake = FakePredictor()
    batcher = Batcher(fake, max_batch_atoms=100, max_wait_ms=300)
    try:
        futures = [batcher.submit([chain(2)], ["energy"]), batcher.submit([chain(1), chain(2, z=2)], ["energy"]),
                   batcher.submit([chain(3)], ["energy"])]
        assert futures[0].result(10)[0]["energy"] == 2
        assert futures[2].result(10)[0]["energy"] == 3
        with pytest.raises(StructureError, match="structure 1: atoms 0 and 1 overlap"):
            futures[1].result(10)
    finally:
        batcher.stop(5)
    assert fake.calls[0] == [2, 1, 2, 3]  # the merged call, then one call per job
    assert len(fake.calls) == 4


def test_batcher_timeout_and_drain_on_stop():
    fake = FakePredictor(delay=0.3)
    batcher = Batcher(fake, max_batch_atoms=100, max_wait_ms=0, enabled=False)
    first = batcher.submit([chain(1)], ["energy"])
    with pytest.raises(RequestTimeoutError):
        batcher.predict([chain(2)], ["energy"], timeout=0.05)  # queued behind `first`, then dropped
    last = batcher.submit([chain(3)], ["energy"])
    batcher.stop(10)  # finishes the queued work before returning
    assert first.result(0)[0]["energy"] == 1 and last.result(0)[0]["energy"] == 3
    assert [c for c in fake.calls] == [[1], [3]]


def test_in_process_app_gives_504_on_timeout(checkpoint):
    """create_app over a Predictor object, served by uvicorn in a thread: a slow model -> 504."""
    from equiformer_calc.checkpoint import load_checkpoint
    from equiformer_calc.predictor import Predictor
    from equiformer_calc.service.app import create_app

    class SlowPredictor(Predictor):
        def predict(self, structures, properties=("energy", "forces")):
            time.sleep(0.3)
            return super().predict(structures, properties)

    app = create_app(SlowPredictor(load_checkpoint(checkpoint)), request_timeout_s=0.1)
    with serve_in_thread(app) as url:
        status, body, _ = http(url + "/v1/predict", {"structures": [as_json(water())]}, token=None)
        assert status == 504 and body["error"]["type"] == "timeout" and "0.1 s" in body["error"]["message"]
        with pytest.raises(RemoteTimeoutError, match="504"):
            RemoteEquiformerCalculator(url, retries=5, backoff=0.01).predict([water()])
        key = 'equiformer_http_requests_total{path="/v1/predict",status="504"}'
        assert metric_values(http(url + "/metrics", token=None)[1])[key] == 2  # one above, one here: not re-sent
        assert http(url + "/v1/models", token=None)[1]["models"][0]["id"] == "tiny"


def test_call_that_does_not_fit_the_memory_now_gives_507_and_the_server_keeps_serving(checkpoint, monkeypatch):
    """memory_budget='auto': the server admits what could ever fit (its 413 edge limits come from all
    of the machine's memory); a call that does not fit the memory available when it starts (here the
    available memory reads as a little more than a water molecule needs) is answered 507 with the
    estimate, before the model runs, and the next request that fits is served."""
    import re

    import equiformer_calc.predictor as predictor_mod
    import equiformer_calc.runtime as runtime_mod
    from equiformer_calc.checkpoint import load_checkpoint
    from equiformer_calc.predictor import MEMORY_HEADROOM, Predictor, total_memory
    from equiformer_calc.service.app import create_app

    predictor = Predictor(load_checkpoint(checkpoint), memory="auto")
    small_edges = predictor.graph(predictor.to_structure(water())).num_edges
    available = int(2 * predictor.estimate_bytes(small_edges, ("energy", "forces"), "fast") / MEMORY_HEADROOM)
    big = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((3, 3, 3))
    big_edges = predictor.graph(predictor.to_structure(big)).num_edges
    assert predictor.estimate_bytes(big_edges, ("energy", "forces"), "low") > MEMORY_HEADROOM * available
    app = create_app(predictor)
    calls = []
    original = predictor_mod.compute
    monkeypatch.setattr(predictor_mod, "compute", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setattr(runtime_mod, "available_memory", lambda device="cpu": available)
    with serve_in_thread(app) as url:
        limits = http(url + "/v1/models", token=None)[1]["models"][0]["limits"]
        assert limits["memory_budget_bytes"] == int(MEMORY_HEADROOM * total_memory()) and limits["memory_mode"] == "auto"
        assert limits["max_edges_per_structure"] > big_edges  # admitted: it would fit an idle machine
        status, body, _ = http(url + "/v1/predict", {"structures": [as_json(big)]}, token=None)
        assert status == 507 and body["error"]["type"] == "insufficient_memory", body
        message = body["error"]["message"]
        assert re.search(r"structure 0: 108 atoms .* about [\d,]+ edges; evaluating energy, forces in memory='low' mode "
                         r"would need about [\d.]+ GiB, over the [\d.e-]+ GiB a call may use now", message), message
        assert calls == []
        status, body, _ = http(url + "/v1/predict", {"structures": [as_json(water())]}, token=None)
        assert status == 200 and len(body["results"][0]["forces"]) == 3 and calls == [1]


@pytest.mark.slow
def test_the_memory_setting_reaches_the_model_worker(checkpoint):
    """The service's model runs in a worker process: its memory mode and budget must be the
    server's. With memory='fast' and a budget between the low and fast estimates the worker
    refuses (a MemoryBudgetError that keeps its type across the process boundary); under the
    default 'auto' it would have run the call in low-memory mode."""
    from equiformer_calc.checkpoint import load_checkpoint
    from equiformer_calc.predictor import MemoryBudgetError, Predictor
    from equiformer_calc.service.worker import IsolatedPredictor

    local = Predictor(load_checkpoint(checkpoint), memory="fast")
    big = local.to_structure(bulk("Cu", "fcc", a=3.6, cubic=True).repeat((3, 3, 3)))
    edges = local.graph(big).num_edges
    low, fast = (local.estimate_bytes(edges, ("energy", "forces"), m) for m in ("low", "fast"))
    local.memory_budget = int((low + fast) / 2)
    isolated = IsolatedPredictor(local, timeout_s=120)
    try:
        with pytest.raises(MemoryBudgetError, match="memory='fast' mode") as info:
            isolated.predict([big], ["energy", "forces"])
        assert info.value.limit == local.memory_budget
        assert isolated.worker_pid is not None and isolated.crashes == 0
    finally:
        isolated.stop()
