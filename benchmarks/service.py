#!/usr/bin/env python
"""Throughput and latency of the HTTP inference service, dynamic batching on vs off.

Starts ``equiformer-calc serve`` (a subprocess on 127.0.0.1, one per batching mode) with a
randomly initialised model of the ``small`` preset (elements H, C, N, O, Cu; random weights are
fine for timing: the cost does not depend on the weights' values), then runs 1, 4 and 16
concurrent clients (threads, each with its own keep-alive :class:`RemoteEquiformerCalculator`)
that send one small structure per request (8-20 atom molecules and Cu(111)+adsorbate slabs,
energy + forces) in a bounded loop. Reports structures/s, p50/p99 request latency and the mean
number of requests merged into one model call (from the server's /metrics), as a markdown table
on stdout; progress goes to the log (stderr).

Example:
    python benchmarks/service.py --update-results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import _common  # noqa: E402  (benchmarks/_common.py, beside this script)

log = logging.getLogger("bench.service")

SECTION = "## Service throughput"
ROOT = Path(__file__).resolve().parent.parent
ELEMENTS = ["H", "C", "N", "O", "Cu"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="small", help="model preset (random weights)")
    p.add_argument("--clients", default="1,4,16", help="comma-separated numbers of concurrent clients")
    p.add_argument("--requests", type=int, default=96, help="timed requests per (mode, clients) cell")
    p.add_argument("--max-seconds", type=float, default=30.0, help="stop a cell early after this long")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    p.add_argument("--max-batch-atoms", type=int, default=1024, help="server --max-batch-atoms")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="server --max-wait-ms")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--device", default="cpu", help="server --device (e.g. cuda)")
    p.add_argument("--update-results", type=Path, help=f"replace the section {SECTION!r} of this markdown file")
    return p.parse_args(argv)


def structures() -> list[Any]:
    """Small structures: 8-14 atom molecules and 13-20 atom Cu(111) slabs with adsorbates."""
    from ase.build import add_adsorbate, fcc111, molecule

    out = []
    for name in ("CH3COOH", "CH3CH2OH", "C4H4NH", "C3H8", "C6H6", "isobutane"):
        out.append(molecule(name))
    slab = fcc111("Cu", (2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "O", 1.7, "fcc")
    out.append(slab)
    slab = fcc111("Cu", (3, 2, 3), vacuum=6.0)
    add_adsorbate(slab, molecule("CO"), 1.9, "ontop")
    out.append(slab)
    for k, atoms in enumerate(out):
        atoms.rattle(0.03, seed=k)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``equiformer-calc serve`` in a subprocess, terminated on exit."""

    def __init__(self, checkpoint: Path, batching: bool, args: argparse.Namespace, logdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = logdir / f"server-{'on' if batching else 'off'}.log"
        cmd = [sys.executable, "-m", "equiformer_calc.cli", "serve", "--checkpoint", str(checkpoint),
               "--host", "127.0.0.1", "--port", str(self.port), "--threads", str(args.threads),
               "--dtype", args.dtype, "--max-batch-atoms", str(args.max_batch_atoms),
               "--max-wait-ms", str(args.max_wait_ms), "--no-access-log", "--device", getattr(args, "device", "cpu")]
        if not batching:
            cmd.append("--no-batching")
        env = {**os.environ, "EQUIFORMER_CALC_TOKEN": ""}
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout} s")

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def run_cell(server: Server, pool: list[Any], clients: int, args: argparse.Namespace) -> dict[str, Any]:
    """``clients`` threads sending one structure per request; bounded by requests and time."""
    from equiformer_calc.service import RemoteEquiformerCalculator

    per_client = max(1, math.ceil(args.requests / clients))
    calcs = [RemoteEquiformerCalculator(server.url, timeout=300) for _ in range(clients)]
    for k, calc in enumerate(calcs):  # warm-up: connection, /v1/models, first model calls
        for i in range(3 if k == 0 else 1):
            calc.predict([pool[(k + i) % len(pool)]])
    before = server.metrics()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    stop_at: list[float] = [0.0]

    def client(c: int) -> None:
        calc = calcs[c]
        barrier.wait()
        for i in range(per_client):
            if time.perf_counter() > stop_at[0]:
                break
            t0 = time.perf_counter()
            calc.predict([pool[(c * 7 + i) % len(pool)]])
            latencies[c].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    stop_at[0] = start + args.max_seconds
    barrier.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    after = server.metrics()
    for calc in calcs:
        calc.close()
    flat = [x for xs in latencies for x in xs]
    calls = after["equiformer_batch_requests_count"] - before["equiformer_batch_requests_count"]
    reqs = after["equiformer_batch_requests_sum"] - before["equiformer_batch_requests_sum"]
    return {
        "clients": clients,
        "requests": len(flat),
        "throughput": len(flat) / wall,
        "p50_ms": 1000 * percentile(flat, 50),
        "p99_ms": 1000 * percentile(flat, 99),
        "per_call": reqs / calls if calls else float("nan"),
    }


def in_process_reference(model: Any, pool: list[Any], args: argparse.Namespace) -> str:
    """Structures/s of the Predictor itself (no HTTP), one by one vs all in one call: the
    ceiling of what batching can gain with this model and these structures."""
    import torch

    from equiformer_calc.predictor import Predictor

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        predictor = Predictor(model, dtype=args.dtype)
        predictor.predict(pool)  # warm-up
        one = batched = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            for atoms in pool:
                predictor.predict([atoms])
            one = min(one, time.perf_counter() - t0)
            t0 = time.perf_counter()
            predictor.predict(pool)
            batched = min(batched, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    n = len(pool)
    return (f"In-process reference (no HTTP, {args.threads} torch thread(s), best of 3): the Predictor evaluates "
            f"these {n} structures at {n / one:.1f} structures/s one by one and {n / batched:.1f} structures/s in "
            f"one batched call ({one / batched:.2f}x), the ceiling of what batching can gain here.")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = ["batching", "clients", "requests", "structures/s", "p50 latency (ms)", "p99 latency (ms)",
              "requests per model call"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['clients']} | {r['requests']} | {r['throughput']:.1f} | {r['p50_ms']:.0f} | "
                     f"{r['p99_ms']:.0f} | {r['per_call']:.2f} |")
    return "\n".join(lines)


def machine_line() -> str:
    return _common.machine_line()


def versions_line() -> str:
    return _common.versions_line(("torch", "fastapi", "uvicorn", "ase"))


def load_note() -> str:
    try:
        load = os.getloadavg()
        return f"1-minute load average at the end of the run: {load[0]:.1f}."
    except OSError:
        return ""


def update_results(path: Path, table: str, args: argparse.Namespace, command: str, model_line: str,
                   summary: str, reference: str) -> None:
    body = "\n".join([
        SECTION,
        "",
        machine_line(),
        versions_line(),
        f"Command: `{command}`",
        "",
        f"{model_line} Server: `equiformer-calc serve --threads {args.threads} --dtype {args.dtype} "
        f"--max-batch-atoms {args.max_batch_atoms} --max-wait-ms {args.max_wait_ms:g}` (plus `--no-batching` for "
        f"the 'off' rows; both servers run side by side and the on/off rows of one client count are measured "
        f"back to back) on 127.0.0.1; clients are threads of the benchmark process, each with its own keep-alive "
        f"`RemoteEquiformerCalculator`, sending one structure per request (energy + forces; 8-14 atom molecules "
        f"and 13-20 atom Cu(111) slabs with O / CO) for {args.requests} requests per row or "
        f"{args.max_seconds:g} s. Latency is the client-side wall time of one request (p99 of ~{args.requests} "
        f"samples is close to the maximum). 'requests per model call' is from the server's /metrics.",
        "",
        "**Noisy numbers**: this was run on 2 cores shared with a training job (`equiformer-calc train`) running "
        f"in the background, and the client threads share those cores with the server. {load_note()} Compare rows "
        "within one run, not across runs.",
        "",
        table,
        "",
        summary,
        "",
        reference,
        "",
    ])
    _common.update_section(path, SECTION, body)
    log.info("updated section %r of %s", SECTION, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from equiformer_calc.checkpoint import save_checkpoint
    from equiformer_calc.model import Equiformer
    from equiformer_calc.service import RemoteEquiformerCalculator

    torch.manual_seed(0)
    model = Equiformer.from_preset(args.preset, elements=ELEMENTS)
    model_line = (f"Model: `{args.preset}` preset, random weights (seed 0), {model.num_parameters():,} parameters, "
                  f"cutoff {model.cutoff:g} A, {args.dtype}.")
    pool = structures()
    reference = in_process_reference(model, pool, args)
    log.info("%s", reference)
    log.info("%s %d structures of %d-%d atoms", model_line, len(pool), min(map(len, pool)), max(map(len, pool)))
    client_counts = [int(c) for c in args.clients.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_checkpoint(model, Path(tmp) / f"{args.preset}-random.safetensors")
        # both servers run side by side (an idle one costs nothing) so that on/off rows of the same
        # client count are measured back to back, under the same background load
        servers = {batching: Server(checkpoint, batching, args, Path(tmp)) for batching in (True, False)}
        try:
            for server in servers.values():
                server.wait_ready()
            for server in servers.values():  # warm-up (the first cell measured was seen to be slow)
                warm = RemoteEquiformerCalculator(server.url, timeout=300)
                for _ in range(2):
                    for atoms in pool:
                        warm.predict([atoms])
                warm.close()
            for clients in client_counts:
                for batching, server in servers.items():
                    row = run_cell(server, pool, clients, args)
                    row["mode"] = "on" if batching else "off"
                    log.info("batching %s, %d clients: %.1f structures/s, p50 %.0f ms, p99 %.0f ms, %.2f req/call",
                             row["mode"], clients, row["throughput"], row["p50_ms"], row["p99_ms"], row["per_call"])
                    rows.append(row)
        finally:
            for server in servers.values():
                server.close()
    rows.sort(key=lambda r: (r["clients"], r["mode"] == "off"))
    table = markdown_table(rows)
    print(table)
    by = {(r["mode"], r["clients"]): r for r in rows}
    top = max(client_counts)
    summary = ""
    if ("on", top) in by and ("off", top) in by:
        on, off = by[("on", top)], by[("off", top)]
        summary = (f"With {top} concurrent clients, batching gives {on['throughput'] / off['throughput']:.2f}x the "
                   f"throughput of one-request-per-call ({on['throughput']:.1f} vs {off['throughput']:.1f} "
                   f"structures/s) and p50 latency {on['p50_ms']:.0f} vs {off['p50_ms']:.0f} ms.")
        print("\n" + summary)
    print("\n" + reference)
    if args.update_results:
        command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *sys.argv[1:]])
        update_results(args.update_results, table, args, command, model_line, summary, reference)
    return 0


if __name__ == "__main__":
    sys.exit(main())
