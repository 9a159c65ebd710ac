#!/usr/bin/env python
"""The GPU path: energy+forces latency, batched throughput, the service and MD on a CUDA device.

Measures, on ``--device`` (default ``cuda``), with the shipped-size model ('small' preset,
random weights, float32, 5 A graph):

1. ms per energy+forces call (``predictor.compute`` on a prebuilt graph, ``torch.cuda.synchronize``
   around every call; median after warm-up) for the 38-atom Cu(111)+CO slab and periodic Cu bulks
   of 500, 2,000, 8,000 and 30,000 atoms, in the memory mode the Predictor picks ('auto': 'fast'
   while it fits in the GPU's free memory), with the peak GPU memory of the call;
2. the batched ``Predictor.predict`` throughput of 64 small structures (graphs included), next to a
   loop of one-structure calls;
3. the HTTP service (``equiformer-calc serve --device cuda``, dynamic batching on) under 16
   concurrent clients (``benchmarks/service.py``'s server and clients);
4. MD steps per second (``workflows.md.run_md``, NVE, 1 fs, neighbour-list skin 1 A) on the
   2,000-atom bulk.

Without a CUDA device it stops with a clear message (exit status 2); ``--device cpu`` runs the
same code on the CPU (used by the test suite with ``--quick``).

Example (on a machine with a GPU):
    python benchmarks/gpu.py --update-results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _common

log = logging.getLogger("bench.gpu")
ROOT = Path(__file__).resolve().parents[1]
SECTION = "## GPU"
SIZES = (500, 2000, 8000, 30000)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="torch device (default cuda)")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="Cu bulk sizes (atoms)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per structure")
    p.add_argument("--md-steps", type=int, default=50, help="MD steps timed")
    p.add_argument("--md-atoms", type=int, default=2000, help="size of the MD bulk")
    p.add_argument("--clients", type=int, default=16, help="concurrent service clients")
    p.add_argument("--requests", type=int, default=192, help="service requests timed")
    p.add_argument("--no-service", action="store_true", help="skip the service measurement")
    p.add_argument("--quick", action="store_true", help="smoke run: 500 atoms only, 2 repeats, 8 batch structures, 3 MD steps, no service")
    p.add_argument("--output", type=Path, help="also write the markdown to this file")
    p.add_argument("--update-results", type=Path, metavar="RESULTS_MD", help=f"write/replace the section '{SECTION}'")
    return p.parse_args(argv)


def require_device(device: str) -> str:
    """The device's name; exits with status 2 and a clear message when it is a CUDA device and
    none is usable."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return f"{dev.type} ({_common.machine_line()})"
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        why = f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else f"torch {torch.__version__} sees no CUDA device"
        log.error("benchmarks/gpu.py needs a CUDA GPU (--device %s), and there is none here (%s). "
                  "Run it on a machine with a GPU, or pass --device cpu to exercise the script.", device, why)
        raise SystemExit(2)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        log.error("--device %s: only %d CUDA device(s) visible", device, torch.cuda.device_count())
        raise SystemExit(2)
    props = torch.cuda.get_device_properties(index)
    return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, torch {torch.__version__}"


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, repeats: int, device) -> list[float]:
    fn()
    _sync(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _predictor(device: str):
    import torch

    from equiformer_calc.model import Equiformer
    from equiformer_calc.predictor import Predictor

    import speed

    torch.manual_seed(0)
    return Predictor(Equiformer.from_preset("small", elements=speed.ELEMENTS), device=device, dtype="float32", memory="auto")


def call_latency(predictor, structures: dict, repeats: int) -> list[dict]:
    """ms per energy+forces call on prebuilt graphs, in the mode the predictor picks."""
    import torch

    from equiformer_calc.predictor import compute

    rows = []
    device = predictor.device
    for name, (atoms, desc) in structures.items():
        structure = predictor.to_structure(atoms)
        try:
            graph = predictor.graph(structure).to(device, predictor.dtype)
            mode = predictor.memory_mode(graph.num_edges)
        except MemoryError as exc:
            rows.append({"name": name, "description": desc, "atoms": len(atoms), "error": str(exc)})
            continue
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)

        def call():
            with torch.enable_grad():
                return compute(predictor.model, graph, forces=True, memory=mode)

        ms = _timed(call, repeats, device)
        peak = (torch.cuda.max_memory_allocated(device) - base) if device.type == "cuda" else None
        rows.append({"name": name, "description": desc, "atoms": len(atoms), "edges": graph.num_edges, "mode": mode,
                     "ms": statistics.median(ms), "peak": peak})
        log.info("%s: %d atoms, %s mode, %.2f ms", name, len(atoms), mode, statistics.median(ms))
        del graph
    return rows


def batched(predictor, count: int, repeats: int) -> dict:
    import speed

    pool = speed.batch_structures(count)
    device = predictor.device
    loop = _timed(lambda: [predictor.predict([a]) for a in pool], max(2, repeats // 3), device)
    many = _timed(lambda: predictor.predict(pool), repeats, device)
    return {"structures": len(pool), "atoms": sum(map(len, pool)), "loop_ms": statistics.median(loop),
            "batch_ms": statistics.median(many)}


def md_rate(device: str, atoms_count: int, steps: int) -> dict:
    from equiformer_calc.calculators.local import EquiformerCalculator
    from equiformer_calc.workflows.md import run_md

    from memory import cu_bulk

    predictor = _predictor(device)
    calc = EquiformerCalculator(model=predictor.model, device=device, dtype="float32", skin=1.0)
    atoms = cu_bulk(atoms_count)
    run_md(atoms, steps=1, calculator=calc, progress=False)  # warm-up
    t0 = time.perf_counter()
    run_md(atoms, steps=steps, calculator=calc, progress=False)
    seconds = time.perf_counter() - t0
    return {"atoms": len(atoms), "steps": steps, "steps_per_s": steps / seconds}


def service_rate(device: str, clients: int, requests: int) -> dict:
    import torch

    import service
    from equiformer_calc.checkpoint import save_checkpoint
    from equiformer_calc.model import Equiformer

    torch.manual_seed(0)
    model = Equiformer.from_preset("small", elements=service.ELEMENTS)
    args = argparse.Namespace(threads=1, dtype="float32", max_batch_atoms=1024, max_wait_ms=5.0, device=device,
                              requests=requests, max_seconds=60.0)
    pool = service.structures()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_checkpoint(model, Path(tmp) / "small-random.safetensors")
        server = service.Server(checkpoint, True, args, Path(tmp))
        try:
            server.wait_ready()
            service.run_cell(server, pool, 2, args)  # warm-up
            row = service.run_cell(server, pool, clients, args)
        finally:
            server.close()
    return row


def report(args, device_name: str, rows: list[dict], batch: dict | None, md: dict | None, svc: dict | None) -> str:
    import speed

    out = [SECTION, "", f"Device: {device_name}.", _common.machine_line(),
           _common.versions_line(["torch", "e3nn", "numpy", "ase"]),
           f"Command: `python benchmarks/gpu.py {' '.join(sys.argv[1:])}`", "",
           "Shipped-size model ('small' preset, random weights), float32, 5 A graph. Energy+forces ms: median of "
           f"{args.repeats} calls on a prebuilt graph (`torch.cuda.synchronize` after each), memory mode as "
           "`Predictor(memory='auto')` picks it; peak: `torch.cuda.max_memory_allocated` during the calls above "
           "the memory held before.", ""]
    table_rows = []
    for r in rows:
        if "error" in r:
            table_rows.append([r["description"], str(r["atoms"]), "-", "-", r["error"][:80], "-", "-"])
            continue
        peak = f"{r['peak'] / 2**20:.0f}" if r.get("peak") is not None else "-"
        table_rows.append([r["description"], str(r["atoms"]), str(r["edges"]), r["mode"], speed.fmt_ms(r["ms"]),
                           speed.fmt_rate(r["atoms"], r["ms"]), peak])
    out += [speed.table(["structure", "atoms", "edges", "mode", "ms / call", "atom-steps/s", "peak memory (MB)"], table_rows), ""]
    if batch:
        out += [f"Batched prediction of {batch['structures']} small structures ({batch['atoms']} atoms, graphs included): "
                f"`predict(list)` {batch['batch_ms']:.1f} ms ({batch['structures'] / batch['batch_ms'] * 1e3:.0f} structures/s), "
                f"loop of `predict([s])` {batch['loop_ms']:.1f} ms ({batch['loop_ms'] / batch['batch_ms']:.1f}x).", ""]
    if svc:
        out += [f"Service (`equiformer-calc serve --device {args.device}`, batching on) under {svc['clients']} clients: "
                f"{svc['throughput']:.1f} structures/s, p50 {svc['p50_ms']:.0f} ms, p99 {svc['p99_ms']:.0f} ms, "
                f"{svc['per_call']:.2f} requests per model call.", ""]
    if md:
        out += [f"MD (NVE, 1 fs, skin 1 A) of the {md['atoms']}-atom Cu bulk: {md['steps_per_s']:.2f} steps/s over "
                f"{md['steps']} steps ({md['steps_per_s'] * md['atoms']:,.0f} atom-steps/s).", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, str(ROOT))
    device_name = require_device(args.device)
    if args.quick:
        args.sizes, args.repeats, args.md_steps, args.no_service = "500", 2, 3, True
    import speed

    from memory import cu_bulk

    structures = {k: v for k, v in speed.build_structures(quick=True).items() if k == "slab38_co"}
    for n in (int(s) for s in args.sizes.split(",") if s):
        structures[f"bulk{n}"] = (cu_bulk(n), f"Cu fcc bulk, {n} atoms, pbc TTT")
    predictor = _predictor(args.device)
    rows = call_latency(predictor, structures, args.repeats)
    batch = batched(predictor, 8 if args.quick else 64, args.repeats)
    md = md_rate(args.device, 500 if args.quick else args.md_atoms, args.md_steps)
    svc = None if args.no_service else service_rate(args.device, args.clients, args.requests)
    body = report(args, device_name, rows, batch, md, svc)
    print(body)
    if args.output:
        args.output.write_text(body + "\n")
    if args.update_results:
        _common.update_section(args.update_results, SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
