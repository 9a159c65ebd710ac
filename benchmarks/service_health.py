#!/usr/bin/env python
"""How fast ``/health`` answers while one hostile or huge request is in flight (issue 27, items 1-2).

Starts ``equiformer-calc serve`` (a subprocess on 127.0.0.1) with a random-weight ``tiny`` model
(elements H, O, Cu), atom limits raised to 600,000 (so that big bodies are read in full) and an
edge limit of 100,000 per request (so that they are then refused without a model call), and sends,
one at a time: extxyz headers claiming 10^9 and 10^14 atoms (as a body and as the JSON ``extxyz``
field), a 16 MiB extxyz body of 200-atom frames, 50,000 one-atom structures as JSON (refused after
the full read: they ask stress of molecules), and 2,000 two-atom structures that are evaluated.
During each, a client polls ``/health`` every 20 ms; the table gives the request's own time, the
number of health answers and their median / worst latency. Markdown on stdout.

    python benchmarks/service_health.py --update-results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

import _common  # noqa: E402  (benchmarks/_common.py, beside this script)

SECTION = "## Service: /health while one large or lying request is in flight"
ROOT = Path(__file__).resolve().parent.parent
LIE = "Properties=species:S:1:pos:R:3\nH 0 0 0\nH 0.7 0 0\n"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, data: bytes, content_type: str) -> tuple[int, str]:
    req = urllib.request.Request(url + "/v1/predict", data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=900) as r:
            return r.status, ""
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())["error"]["type"]


def _measure(url: str, data: bytes, content_type: str) -> dict[str, Any]:
    latencies: list[float] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            start = time.perf_counter()
            with urllib.request.urlopen(url + "/health", timeout=120) as r:
                r.read()
            latencies.append(time.perf_counter() - start)
            time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    start = time.perf_counter()
    status, error = _post(url, data, content_type)
    took = time.perf_counter() - start
    done.set()
    poller.join(120)
    return {"status": f"{status} {error}".strip(), "took": took, "n": len(latencies),
            "median": 1000 * statistics.median(latencies) if latencies else float("nan"),
            "max": 1000 * max(latencies) if latencies else float("nan")}


def _extxyz(frames: int, atoms: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(frames):
        out += [str(atoms), 'Lattice="30 0 0 0 30 0 0 0 30" Properties=species:S:1:pos:R:3 pbc="F F F"']
        out += [f"H {x:.6f} {y:.6f} {z:.6f}" for x, y, z in rng.uniform(0, 30, (atoms, 3))]
    return "\n".join(out) + "\n"


def cases() -> list[tuple[str, bytes, str]]:
    frame = _extxyz(1, 200, seed=1)
    big = frame * ((16 << 20) // len(frame))
    one = [{"numbers": [1], "positions": [[0.1 * k, 0, 0]]} for k in range(50_000)]
    two = [{"numbers": [1, 8], "positions": [[0, 0, 0], [0.97 + 1e-4 * k, 0, 0]]} for k in range(2_000)]
    xyz, js = "chemical/x-extxyz", "application/json"
    return [
        ("extxyz body, header claims 10^9 atoms (60 B)", f"{10**9}\n{LIE}".encode(), xyz),
        ("extxyz body, header claims 10^14 atoms", f"{10**14}\n{LIE}".encode(), xyz),
        ('JSON `extxyz` field, header claims 10^9 atoms', json.dumps({"extxyz": f"{10**9}\n{LIE}"}).encode(), js),
        ('JSON `extxyz` field, header claims 10^14 atoms', json.dumps({"extxyz": f"{10**14}\n{LIE}"}).encode(), js),
        (f"extxyz body, {len(big) / 2**20:.1f} MiB (2,700 frames of 200 atoms), read in full", big.encode(), xyz),
        ("JSON, 50,000 one-atom structures (2.6 MB), read in full", json.dumps(
            {"structures": one, "properties": ["energy", "stress"]}).encode(), js),
        ("JSON, 2,000 two-atom structures, evaluated", json.dumps({"structures": two}).encode(), js),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update-results", type=Path, help="replace this script's section of a RESULTS.md")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from equiformer_calc.checkpoint import save_checkpoint
    from equiformer_calc.model import Equiformer

    tmp = Path(tempfile.mkdtemp())
    ckpt = save_checkpoint(Equiformer.from_preset("tiny", elements=["H", "O", "Cu"]), tmp / "tiny.safetensors")
    port = _port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "equiformer_calc.cli", "serve", "--checkpoint", str(ckpt), "--port", str(port),
           "--threads", "1", "--max-atoms-per-structure", "600000", "--max-atoms-per-request", "600000",
           "--max-edges-per-request", "100000", "--max-body-mb", "17", "--no-access-log"]
    env = {**os.environ, "EQUIFORMER_CALC_TOKEN": ""}
    with open(tmp / "server.log", "wb") as log:
        server = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2).read()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, (tmp / "server.log").read_text()
                time.sleep(0.2)
        idle = _measure(url, b"{}", "application/json")
        rows = [("(idle: an empty JSON object, 422)", idle)]
        rows += [(name, _measure(url, data, ctype)) for name, data, ctype in cases()]
    finally:
        server.terminate()
        server.wait(60)
    lines = [SECTION, "", _common.machine_line(), "",
             f"Command: `python benchmarks/service_health.py`. Server: `equiformer-calc serve --threads 1` with a "
             "random-weight `tiny` model, atom limits 600,000, 100,000 edges per request, 17 MiB bodies. "
             "The machine was shared with other jobs (loaded), so the worst latencies move between runs.", "",
             "| request | answer | request time (s) | /health answers | median (ms) | worst (ms) |",
             "|---|---|---:|---:|---:|---:|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['status']} | {r['took']:.2f} | {r['n']} | {r['median']:.1f} | {r['max']:.1f} |")
    body = "\n".join(lines)
    print(body)
    if args.update_results:
        _common.update_section(args.update_results, SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
