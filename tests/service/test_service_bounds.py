"""Every request costs what its bytes are worth (issue 27, items 1-2): against a real server process.

Reproductions of the issue: an extxyz header claiming 10^9 or 10^14 atoms (as a body and as the
JSON ``extxyz`` field) froze the event loop for 24 s to minutes and made SIGTERM useless; 50,000
one-atom structures (2.6 MB JSON) blocked ``/health`` for 7.9 s and a 16 MiB extxyz body for
2.3 s. Now the header is checked against the lines that follow and the atom limits before any
frame is read (413/422 naming the declared count), parsing runs in a parser process and the
rest off the event loop, and ``/health`` stays responsive while any of these is in flight.

The latency bound asserted here is loose for a loaded 2-core machine (median under 100 ms, worst
under 1 s, against the seconds the issue measured); ``benchmarks/service_health.py`` measures it.
"""

from __future__ import annotations

import json
import signal
import socket
import statistics
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from .test_service import ServerProcess, checkpoint, http  # noqa: F401 - checkpoint is a fixture

#: this server admits big requests so that they are read in full (and then refused by the edge
#: limit, or evaluated: the one-atom structures have no edges)
MAX_ATOMS = 600_000
MAX_EDGES_PER_REQUEST = 100_000
LIE = "Properties=species:S:1:pos:R:3\nH 0 0 0\nH 0.7 0 0\n"


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    proc = ServerProcess(
        checkpoint, tmp_path_factory.mktemp("logs") / "bounds.log", "--max-atoms-per-structure", str(MAX_ATOMS),
        "--max-atoms-per-request", str(MAX_ATOMS), "--max-edges-per-request", str(MAX_EDGES_PER_REQUEST),
        "--max-body-mb", "17", "--no-access-log", "--graceful-timeout", "3",
        env={"EQUIFORMER_CALC_TOKEN": ""},
    )
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def health_latencies_during(url: str, call: Callable[[], Any]) -> tuple[Any, list[float]]:
    """Run ``call`` while polling ``/health`` every 20 ms; returns (its result, the latencies)."""
    latencies: list[float] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            start = time.perf_counter()
            with urllib.request.urlopen(url + "/health", timeout=60) as r:
                assert r.status == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        result = call()
    finally:
        done.set()
        poller.join(60)
    return result, latencies


def assert_responsive(latencies: list[float]) -> None:
    assert latencies, "no /health answer while the request was in flight"
    assert statistics.median(latencies) < 0.1 and max(latencies) < 1.0, sorted(latencies)[-5:]


def extxyz_text(n_frames: int, atoms_per_frame: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n_frames):
        lines += [str(atoms_per_frame), 'Lattice="30 0 0 0 30 0 0 0 30" Properties=species:S:1:pos:R:3 pbc="F F F"']
        lines += [f"H {x:.6f} {y:.6f} {z:.6f}" for x, y, z in rng.uniform(0, 30, (atoms_per_frame, 3))]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("count", [10**9, 10**14])
@pytest.mark.parametrize("how", ["body", "field"])
def test_lying_extxyz_header_is_refused_at_once(server, count, how):
    text = f"{count}\n{LIE}"
    if how == "body":
        call = lambda: http(server.url + "/v1/predict", text, content_type="chemical/x-extxyz", token=None)  # noqa: E731
    else:
        call = lambda: http(server.url + "/v1/predict", {"extxyz": text}, token=None)  # noqa: E731
    start = time.perf_counter()
    (status, body, _), latencies = health_latencies_during(server.url, call)
    assert time.perf_counter() - start < 10
    assert status == 413 and body["error"]["type"] == "too_large", body
    assert f"declares {count} atoms" in body["error"]["message"] and f"at most {MAX_ATOMS}" in body["error"]["message"]


def test_header_larger_than_the_lines_that_follow_is_422(server):
    status, body, _ = http(server.url + "/v1/predict", f"500000\n{LIE}", content_type="chemical/x-extxyz", token=None)
    assert status == 422 and body["error"]["type"] == "invalid_extxyz", body
    assert "frame 0 declares 500000 atoms but only 2 line(s) follow its header" in body["error"]["message"]
    # a later frame is checked too, and named
    two = extxyz_text(1, 2) + f"7\n{LIE}"
    status, body, _ = http(server.url + "/v1/predict", {"extxyz": two}, token=None)
    assert status == 422 and "frame 1 declares 7 atoms" in body["error"]["message"], body


@pytest.mark.slow
def test_health_answers_while_a_16_mib_extxyz_is_read(server):
    frame = extxyz_text(1, 200, seed=1)
    text = frame * ((16 << 20) // len(frame))  # ~16 MiB of 200-atom frames
    assert len(text) > 15.9 * (1 << 20)
    call = lambda: http(server.url + "/v1/predict", text, content_type="chemical/x-extxyz", token=None)  # noqa: E731
    (status, body, _), latencies = health_latencies_during(server.url, call)
    # read in full (every frame parsed and checked), then refused by the edge limit
    assert status == 413 and "edges" in body["error"]["message"] and "per request" in body["error"]["message"], body
    assert_responsive(latencies)


@pytest.mark.slow
def test_health_answers_while_50000_structures_are_read(server):
    """The issue's 50,000 one-atom structures (2.6 MB of JSON): decoded, checked element by element
    and edge-estimated in full, then refused for asking stress of molecules (so the model, which
    would take minutes for them on this machine, is not called)."""
    structures = [{"numbers": [1], "positions": [[0.1 * k, 0.0, 0.0]]} for k in range(50_000)]
    body = json.dumps({"structures": structures, "properties": ["energy", "stress"]})
    assert len(body) > 2_000_000
    call = lambda: http(server.url + "/v1/predict", body, token=None, timeout=600)  # noqa: E731
    (status, answer, _), latencies = health_latencies_during(server.url, call)
    assert status == 422 and answer["error"]["type"] == "stress_unavailable", answer
    assert_responsive(latencies)


@pytest.mark.slow
def test_health_answers_while_2000_structures_are_evaluated(server):
    """Structures and results cross to the model worker packed, and the answer is written off the
    event loop: /health answers while 2,000 structures are evaluated and returned."""
    structures = [{"numbers": [1, 8], "positions": [[0.0, 0.0, 0.0], [0.97 + 1e-4 * k, 0.0, 0.0]]}
                  for k in range(2_000)]
    body = json.dumps({"structures": structures, "properties": ["energy", "forces"]})
    call = lambda: http(server.url + "/v1/predict", body, token=None, timeout=600)  # noqa: E731
    (status, answer, _), latencies = health_latencies_during(server.url, call)
    assert status == 200, answer
    energies = [r["energy"] for r in answer["results"]]
    assert len(energies) == 2_000 and len(set(energies)) > 1000  # each its own bond length
    assert_responsive(latencies)


def _half_sent_request(url: str, payload: bytes) -> socket.socket:
    """A client that sends the headers and ``payload`` of a longer body, then stalls."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: chemical/x-extxyz\r\n"
                 b"Content-Length: %d\r\n\r\n" % (len(payload) + 1000) + payload)
    return sock


def test_sigterm_stops_the_server_within_its_grace_period_during_a_lying_request(checkpoint, tmp_path):
    """A lying-header request still being sent when SIGTERM arrives: the server is gone within
    --graceful-timeout (3 s here) plus the stop margin, with status 0."""
    from equiformer_calc.service.serve import STOP_MARGIN_S

    proc = ServerProcess(checkpoint, tmp_path / "sigterm.log", "--graceful-timeout", "3", "--no-access-log",
                         env={"EQUIFORMER_CALC_TOKEN": ""})
    try:
        proc.wait_ready()
        sock = _half_sent_request(proc.url, f"{10**14}\n{LIE}".encode())
        time.sleep(0.5)
        assert proc.proc.poll() is None
        start = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        rc = proc.proc.wait(3 + STOP_MARGIN_S + 10)
        elapsed = time.monotonic() - start
        sock.close()
        assert rc == 0 and elapsed < 3 + STOP_MARGIN_S, (rc, elapsed, proc.log()[-3000:])
        assert "SIGTERM: stopping" in proc.log()
    finally:
        proc.stop()


def test_startup_log_says_where_calls_run(server):
    log = Path(server.log_path).read_text()
    assert "model calls in a worker process" in log and "parser process" in log
