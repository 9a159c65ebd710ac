#!/usr/bin/env python
"""Throughput and latency of the HTTP inference service, dynamic batching on vs off, and this
checkout's service against an older checkout's (``--compare-with``).

Starts ``equiformer-calc serve`` (subprocesses on 127.0.0.1, one per code version and batching
mode, all side by side) with a randomly initialised model of the ``small`` preset (elements H, C,
N, O, Cu; random weights are fine for timing: the cost does not depend on the weights' values).
Each measured cell runs 1, 4 or 16 concurrent clients (threads of a client subprocess that
imports the same code version as its server, each thread with its own
:class:`RemoteEquiformerCalculator`), sending one small structure per request (8-20 atom
molecules and Cu(111)+adsorbate slabs, energy + forces) in a bounded loop. Reports
structures/s, p50/p99 request latency (client side) and the mean number of requests merged into
one model call (from the server's /metrics). Cells of the two code versions are measured back to
back, in alternating order over ``--repeats`` rounds, so that background load hits both alike;
the CPU time other processes took during the run is reported. Markdown table on stdout;
progress goes to the log (stderr).

Example (before/after a change, in one session):
    git worktree add /tmp/old 201b295
    python benchmarks/service.py --compare-with /tmp/old --update-results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
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
    p.add_argument("--modes", default="on,off", help="batching modes to measure: on, off or on,off")
    p.add_argument("--requests", type=int, default=96, help="timed requests per cell")
    p.add_argument("--max-seconds", type=float, default=30.0, help="stop a cell early after this long")
    p.add_argument("--repeats", type=int, default=1, help="rounds over all cells (the order of the code versions "
                                                          "alternates between rounds)")
    p.add_argument("--compare-with", type=Path, metavar="CHECKOUT",
                   help="a checkout of other code (e.g. `git worktree add /tmp/old COMMIT`): its server and client "
                        "are measured too, cell by cell against this checkout's")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    p.add_argument("--max-batch-atoms", type=int, default=1024, help="server --max-batch-atoms")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="server --max-wait-ms")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--device", default="cpu", help="server --device (e.g. cuda)")
    p.add_argument("--update-results", type=Path, help=f"replace the section {SECTION!r} of this markdown file")
    p.add_argument("--client-cell", help=argparse.SUPPRESS)  # internal: run one cell's clients (JSON spec)
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


def scrape(url: str) -> dict[str, float]:
    """The server's /metrics, parsed by prometheus_client (unlabelled samples by name)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


class Version:
    """One code version: a checkout whose ``equiformer_calc`` the server and the clients import."""

    def __init__(self, role: str, checkout: Path) -> None:
        self.checkout = checkout.resolve()
        if not (self.checkout / "equiformer_calc" / "__init__.py").is_file():
            raise SystemExit(f"{checkout} is not a checkout of equiformer-calc (no equiformer_calc/__init__.py)")
        self.commit = _git(self.checkout, "rev-parse", "--short", "HEAD") or "?"
        dirty = _git(self.checkout, "status", "--porcelain", "--untracked-files=no")
        self.label = f"{role} ({self.commit}{'+uncommitted' if dirty else ''})"

    def env(self) -> dict[str, str]:
        path = os.environ.get("PYTHONPATH")
        return {**os.environ, "PYTHONPATH": str(self.checkout) + (os.pathsep + path if path else ""),
                "EQUIFORMER_CALC_TOKEN": ""}


def _git(where: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


class Server:
    """``equiformer-calc serve`` of one code version in a subprocess, terminated on exit."""

    def __init__(self, checkpoint: Path, version: Version, batching: bool, args: argparse.Namespace,
                 logdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = logdir / f"server-{version.commit}-{'on' if batching else 'off'}.log"
        cmd = [sys.executable, "-m", "equiformer_calc.cli", "serve", "--checkpoint", str(checkpoint),
               "--host", "127.0.0.1", "--port", str(self.port), "--threads", str(args.threads),
               "--dtype", args.dtype, "--max-batch-atoms", str(args.max_batch_atoms),
               "--max-wait-ms", str(args.max_wait_ms), "--no-access-log", "--device", getattr(args, "device", "cpu")]
        if not batching:
            cmd.append("--no-batching")
        self._log = open(self.log_path, "wb")
        # cwd and PYTHONPATH: `-m equiformer_calc.cli` imports the version's own package
        self.proc = subprocess.Popen(cmd, cwd=version.checkout, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=version.env())

    def wait_ready(self, timeout: float = 300.0) -> None:
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

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


def _proc_table() -> dict[int, tuple[int, float, str]]:
    """Every live process from Linux /proc: pid -> (parent pid, user + system CPU seconds, comm)."""
    tick = os.sysconf("SC_CLK_TCK")
    table: dict[int, tuple[int, float, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick,
                             raw[raw.index("(") + 1: raw.rindex(")")])
    return table


def _with_descendants(table: dict[int, tuple[int, float, str]], root: int) -> set[int]:
    """``root`` and every process below it in ``table``."""
    tree, changed = {root}, True
    while changed:
        changed = False
        for child, (parent, _, _) in table.items():
            if parent in tree and child not in tree:
                tree.add(child)
                changed = True
    return tree


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its live descendants (the server's model
    worker process), from Linux /proc; NaN where not available."""
    if not Path(f"/proc/{pid}/stat").exists():
        return float("nan")
    table = _proc_table()
    return sum(table[p][1] for p in _with_descendants(table, pid) if p in table)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


# ---------------------------------------------------------------------------------- client side
def client_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """Run in a subprocess that imports the measured code version: ``clients`` threads, each with
    its own calculator, send one structure per request; bounded by requests and time."""
    import equiformer_calc.service.client as client_module
    from equiformer_calc.service import RemoteEquiformerCalculator

    url, clients = spec["url"], int(spec["clients"])
    pool = structures()
    per_client = max(1, math.ceil(spec["requests"] / clients))
    calcs = [RemoteEquiformerCalculator(url, timeout=300) for _ in range(clients)]
    for k, calc in enumerate(calcs):  # warm-up: connection, /v1/models, first model calls
        for i in range(3 if k == 0 else 1):
            calc.predict([pool[(k + i) % len(pool)]])
    before = scrape(url)
    server_cpu0, client_cpu0 = process_cpu_seconds(spec["server_pid"]), time.process_time()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    stop_at = [0.0]

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
    stop_at[0] = start + spec["max_seconds"]
    barrier.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    client_cpu = time.process_time() - client_cpu0  # before reading /proc, which costs CPU too
    server_cpu = process_cpu_seconds(spec["server_pid"]) - server_cpu0
    after = scrape(url)
    for calc in calcs:
        calc.close()
    return {
        "latencies": [x for xs in latencies for x in xs],
        "wall": wall,
        "calls": after["equiformer_batch_requests_count"] - before["equiformer_batch_requests_count"],
        "merged": after["equiformer_batch_requests_sum"] - before["equiformer_batch_requests_sum"],
        "server_cpu": server_cpu,
        "client_cpu": client_cpu,
        "client_module": client_module.__file__,
    }


def run_cell(server: Server, version: Version, clients: int, args: argparse.Namespace) -> dict[str, Any]:
    """One cell in a client subprocess of ``version``; checks it imported that version's client."""
    spec = {"url": server.url, "server_pid": server.proc.pid, "clients": clients, "requests": args.requests,
            "max_seconds": args.max_seconds}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--client-cell", json.dumps(spec)],
                          cwd=version.checkout, env=version.env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"client cell failed ({version.label}, {clients} clients):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(result["client_module"]).resolve().is_relative_to(version.checkout):
        raise RuntimeError(f"the {version.label} client imported {result['client_module']}, not its own code")
    return result


# ---------------------------------------------------------------------------------- other load
class OtherLoad:
    """CPU time taken by processes that are not this benchmark or its children, sampled from /proc
    every ``interval`` seconds (processes that start and end between two samples are missed)."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.start = self.end = 0.0

    def _sample(self, initial: bool) -> None:
        stats = {pid: (ppid, cpu, _process_name(pid, comm)) for pid, (ppid, cpu, comm) in _proc_table().items()}
        ours = _with_descendants(stats, os.getpid())  # this process and its children
        for pid, (_, cpu, name) in stats.items():
            if pid in ours:
                continue
            self.first.setdefault(pid, cpu if initial else 0.0)
            self.last[pid] = cpu
            self.names[pid] = name

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample(initial=False)

    def __enter__(self) -> "OtherLoad":
        self.start = time.monotonic()
        if Path("/proc/stat").exists():
            self._sample(initial=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
            self._sample(initial=False)
        self.end = time.monotonic()

    def summary(self, top: int = 3) -> str:
        if not self.last:
            return "Other processes' CPU use was not measured (no /proc)."
        wall = max(self.end - self.start, 1e-9)
        used = {pid: self.last[pid] - self.first[pid] for pid in self.last}
        total = sum(used.values())
        heavy = sorted(used, key=used.get, reverse=True)[:top]  # type: ignore[arg-type]
        names = ", ".join(f"{self.names[p]} {used[p] / wall:.2f}" for p in heavy if used[p] / wall >= 0.05)
        span = f"{wall / 60:.1f} min" if wall >= 120 else f"{wall:.0f} s"
        return (f"Other processes on the machine used {total / wall:.2f} cores on average during the "
                f"{span} run" + (f" (busiest, in cores: {names})" if names else "") + ".")


def _process_name(pid: int, comm: str) -> str:
    """A readable name: the script or module a Python process runs, else the command name."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return comm
    if argv and os.path.basename(argv[0]).startswith("python"):
        rest = argv[1:]
        for k, arg in enumerate(rest):
            if arg == "-m" and k + 1 < len(rest):
                return f"python -m {rest[k + 1]}"[:50]
            if arg == "-c":
                return "python -c ..."
            if arg and not arg.startswith("-"):
                return f"python {arg}"[:50]
    return comm


# ---------------------------------------------------------------------------------- report
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


def aggregate(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool the repeats of one (version, mode, clients): throughput over the summed wall time,
    latency percentiles over all samples, and each repeat's throughput."""
    latencies = [x for c in cells for x in c["latencies"]]
    calls = sum(c["calls"] for c in cells)
    return {
        "requests": len(latencies),
        "throughput": len(latencies) / sum(c["wall"] for c in cells),
        "per_repeat": [len(c["latencies"]) / c["wall"] for c in cells],
        "p50_ms": 1000 * percentile(latencies, 50),
        "p99_ms": 1000 * percentile(latencies, 99),
        "per_call": sum(c["merged"] for c in cells) / calls if calls else float("nan"),
        "server_cpu_ms": 1000 * sum(c["server_cpu"] for c in cells) / len(latencies),
        "client_cpu_ms": 1000 * sum(c["client_cpu"] for c in cells) / len(latencies),
    }


def markdown_table(rows: list[dict[str, Any]], with_code: bool) -> str:
    header = (["code"] if with_code else []) + [
        "batching", "clients", "requests", "structures/s", "per repeat", "p50 latency (ms)", "p99 latency (ms)",
        "requests per model call", "server CPU ms/request", "client CPU ms/request"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for r in rows:
        cells = ([r["code"]] if with_code else []) + [
            r["mode"], str(r["clients"]), str(r["requests"]), f"{r['throughput']:.1f}",
            ", ".join(f"{x:.1f}" for x in r["per_repeat"]), f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}",
            f"{r['per_call']:.2f}", f"{r['server_cpu_ms']:.1f}", f"{r['client_cpu_ms']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison(rows: list[dict[str, Any]], versions: list[Version]) -> str:
    """'after / before' throughput and p50 ratios per (mode, clients)."""
    if len(versions) < 2:
        return ""
    new, old = versions[0].label, versions[1].label
    by = {(r["code"], r["mode"], r["clients"]): r for r in rows}
    parts = []
    for (code, mode, clients), r in by.items():
        if code != new or (old, mode, clients) not in by:
            continue
        o = by[(old, mode, clients)]
        parts.append(f"batching {mode}, {clients} client(s): throughput x{r['throughput'] / o['throughput']:.2f}, "
                     f"p50 x{r['p50_ms'] / o['p50_ms']:.2f}, server CPU per request "
                     f"x{r['server_cpu_ms'] / o['server_cpu_ms']:.2f}, client CPU per request "
                     f"x{r['client_cpu_ms'] / o['client_cpu_ms']:.2f}")
    return f"{new} relative to {old}: " + "; ".join(parts) + "."


def update_results(path: Path, table: str, args: argparse.Namespace, command: str, model_line: str,
                   versions: list[Version], load: str, summary: str, compared: str, reference: str) -> None:
    code = ""
    if len(versions) > 1:
        code = (f"Code: {versions[0].label} is this checkout; {versions[1].label} is the checkout given to "
                f"`--compare-with`. Each version's server and client run its own code (the client subprocess "
                f"imports the version's `equiformer_calc`; the script checks which file it imported). Within a "
                f"round, the cells of the two versions run back to back, in alternating order between rounds.")
    body = "\n".join([
        SECTION,
        "",
        _common.machine_line(),
        _common.versions_line(("torch", "fastapi", "uvicorn", "ase", "httpcore", "orjson", "prometheus_client")),
        f"Command: `{command}`",
        "",
        f"{model_line} Server: `equiformer-calc serve --threads {args.threads} --dtype {args.dtype} "
        f"--max-batch-atoms {args.max_batch_atoms} --max-wait-ms {args.max_wait_ms:g}` (plus `--no-batching` for "
        f"the 'off' rows; all servers run side by side) on 127.0.0.1; clients are threads of a client "
        f"subprocess, each with its own keep-alive `RemoteEquiformerCalculator`, sending one structure per "
        f"request (energy + forces; 8-14 atom molecules and 13-20 atom Cu(111) slabs with O / CO) for "
        f"{args.requests} requests per cell or {args.max_seconds:g} s, over {args.repeats} round(s). "
        f"'structures/s' is all requests of a row over their summed wall time, 'per repeat' each round's; "
        f"latency is the client-side wall time of one request, pooled over the rounds. 'requests per model "
        f"call' is from the server's /metrics. 'server CPU' is the user + system time (/proc) of the server "
        f"process and its model worker process, and 'client CPU' the client subprocess's (all its threads) over the timed requests, per "
        f"request: unlike wall time, this cost is hardly moved by other load on the machine.",
        "",
        code,
        "",
        f"**Shared machine**: {load} The client threads share the cores with the server too, so absolute "
        "numbers move between runs; compare rows within one run.",
        "",
        table,
        "",
        compared,
        "",
        summary,
        "",
        reference,
        "",
    ])
    while "\n\n\n" in body:  # an empty part (e.g. no comparison) leaves no gap
        body = body.replace("\n\n\n", "\n\n")
    _common.update_section(path, SECTION, body)
    log.info("updated section %r of %s", SECTION, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.client_cell:
        print(json.dumps(client_cell(json.loads(args.client_cell))))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from equiformer_calc.checkpoint import save_checkpoint
    from equiformer_calc.model import Equiformer

    versions = [Version("after" if args.compare_with else "this checkout", ROOT)]
    if args.compare_with:
        versions.append(Version("before", args.compare_with))
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - {"on", "off"}:
        raise SystemExit(f"--modes takes on, off or on,off; got {args.modes!r}")
    torch.manual_seed(0)
    model = Equiformer.from_preset(args.preset, elements=ELEMENTS)
    model_line = (f"Model: `{args.preset}` preset, random weights (seed 0), {model.num_parameters():,} parameters, "
                  f"cutoff {model.cutoff:g} A, {args.dtype}.")
    pool = structures()
    client_counts = [int(c) for c in args.clients.split(",")]
    cells: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp, OtherLoad() as load:
        reference = in_process_reference(model, pool, args)
        log.info("%s", reference)
        log.info("%s %d structures of %d-%d atoms", model_line, len(pool), min(map(len, pool)), max(map(len, pool)))
        checkpoint = save_checkpoint(model, Path(tmp) / f"{args.preset}-random.safetensors")
        servers = {(v.label, mode): Server(checkpoint, v, mode == "on", args, Path(tmp))
                   for v in versions for mode in modes}
        try:
            for server in servers.values():
                server.wait_ready()
            for (label, mode), server in servers.items():  # warm-up (the first cell measured was seen to be slow)
                version = next(v for v in versions if v.label == label)
                run_cell(server, version, 1, argparse.Namespace(**{**vars(args), "requests": 2 * len(pool)}))
            for rep in range(args.repeats):
                for k, clients in enumerate(client_counts):
                    for mode in modes:
                        order = versions if (rep + k) % 2 == 0 else versions[::-1]
                        for version in order:
                            cell = run_cell(servers[(version.label, mode)], version, clients, args)
                            cells.setdefault((version.label, mode, clients), []).append(cell)
                            n = len(cell["latencies"])
                            log.info("round %d, %s, batching %s, %d clients: %.1f structures/s, p50 %.0f ms",
                                     rep + 1, version.label, mode, clients, n / cell["wall"],
                                     1000 * percentile(cell["latencies"], 50))
        finally:
            for server in servers.values():
                server.close()
    rows = []
    for (label, mode, clients), group in cells.items():
        rows.append({"code": label, "mode": mode, "clients": clients, **aggregate(group)})
    order_of = {v.label: k for k, v in enumerate(versions)}
    rows.sort(key=lambda r: (r["mode"] == "off", r["clients"], order_of[r["code"]]))
    table = markdown_table(rows, with_code=len(versions) > 1)
    print(table)
    compared = comparison(rows, versions)
    by = {(r["code"], r["mode"], r["clients"]): r for r in rows}
    top, current = max(client_counts), versions[0].label
    summary = ""
    if (current, "on", top) in by and (current, "off", top) in by:
        on, off = by[(current, "on", top)], by[(current, "off", top)]
        summary = (f"With {top} concurrent clients ({current}), batching gives {on['throughput'] / off['throughput']:.2f}x "
                   f"the throughput of one-request-per-call ({on['throughput']:.1f} vs {off['throughput']:.1f} "
                   f"structures/s) and p50 latency {on['p50_ms']:.0f} vs {off['p50_ms']:.0f} ms.")
    load_line = load.summary()
    for line in (compared, summary, reference, load_line):
        if line:
            print("\n" + line)
    if args.update_results:
        command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *sys.argv[1:]])
        update_results(args.update_results, table, args, command, model_line, versions, load_line, summary,
                       compared, reference)
    return 0


if __name__ == "__main__":
    sys.exit(main())
