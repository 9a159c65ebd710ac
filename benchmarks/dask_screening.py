#!/usr/bin/env python
"""Screening throughput in-process and on a Dask LocalCluster of 1 and 2 workers, and the per-task overhead.

Runs the same adsorbate screening (metals x (111) x adsorbates, all symmetry-distinct sites,
the OC20 gas references and clean slabs; ``--steps`` cap) four ways into fresh databases:
in-process without an executor (the default path), through the in-process ``SerialExecutor``
in chunks of ``--chunk-size``, and on a LocalCluster of 1 and of 2 worker processes (one task at a
time each; torch threads = cores // workers) with the same chunks. Reports wall time,
relaxations per second and whether the numbers of the Dask runs equal the SerialExecutor run.
The cluster start-up (processes, imports) is timed apart from the screening; the model is sent
to the workers inside the timed screening, as a user would see it.

Per-task overhead: ``--overhead-tasks`` tasks that only look up the worker's model
(``worker_model``) on the 2-worker cluster, wall time / tasks; and the same lookups in-process.

Example:
    python benchmarks/dask_screening.py --update-results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: E402  (benchmarks/_common.py, beside this script)

log = logging.getLogger("bench.dask_screening")

SECTION = "## Screening on Dask (throughput vs workers, per-task overhead)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--metals", default="Cu,Pt")
    p.add_argument("--adsorbates", default="O,OH,CO")
    p.add_argument("--size", default="2x2x4", help="slab size nx x ny x layers")
    p.add_argument("--steps", type=int, default=40, help="step cap per relaxation")
    p.add_argument("--chunk-size", type=int, default=4, help="relaxations per Dask task")
    p.add_argument("--checkpoint", default=None, help="default: the shipped checkpoint")
    p.add_argument("--overhead-tasks", type=int, default=200)
    p.add_argument("--note", default="", help="a sentence about the machine's state, written into RESULTS.md")
    p.add_argument("--update-results", type=Path, metavar="RESULTS_MD", help="replace the section in this file")
    return p.parse_args(argv)


def _lookup(key: str) -> int:
    from equiformer_calc.distributed import worker_model

    return len(worker_model(key).model.elements)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("distributed", "equiformer_calc"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import ase.db
    import numpy as np
    import torch

    from equiformer_calc import EquiformerCalculator
    from equiformer_calc.distributed import SerialExecutor, open_executor
    from equiformer_calc.surfaces import build_surface
    from equiformer_calc.workflows.screening import screen_adsorbates

    cores = len(os.sched_getaffinity(0))
    size = tuple(int(x) for x in args.size.split("x"))
    slabs = {f"{m}-fcc111": build_surface(m, "111", size=size, vacuum=7.0) for m in args.metals.split(",")}
    adsorbates = args.adsorbates.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="bench-dask-"))

    def screen(tag: str, executor, torch_threads: int) -> dict:
        torch.set_num_threads(torch_threads)
        calc = EquiformerCalculator(checkpoint=args.checkpoint)
        db = tmp / f"{tag}.db"
        start = time.perf_counter()
        res = screen_adsorbates(slabs, adsorbates, db=db, calculator=calc, steps=args.steps, fix_bottom=2,
                                progress=False, executor=executor, chunk_size=args.chunk_size)
        wall = time.perf_counter() - start
        rows = {r.task_key: r for r in ase.db.connect(db).select()}
        steps = sum(r.nsteps for r in rows.values())
        log.info("%s: %d relaxations (%d steps) in %.1f s", tag, res.computed, steps, wall)
        return {"tag": tag, "wall": wall, "n": res.computed, "steps": steps, "rows": rows}

    results = [screen("in-process (no executor)", None, cores)]
    references = {
        cores: screen(f"SerialExecutor, chunks of {args.chunk_size}, {cores} torch threads", SerialExecutor(), cores),
    }
    results.append(references[cores])
    if cores > 1:
        references[1] = screen(f"SerialExecutor, chunks of {args.chunk_size}, 1 torch thread", SerialExecutor(), 1)
        results.append(references[1])
    startup = {}
    overhead = {}
    for workers in (1, 2):
        start = time.perf_counter()
        with open_executor(workers=workers) as executor:
            executor.client.wait_for_workers(workers)
            startup[workers] = time.perf_counter() - start
            threads = max(1, cores // workers)
            run = screen(f"Dask LocalCluster, {workers} worker(s) x {threads} torch thread(s), chunks of "
                         f"{args.chunk_size}", executor, 1)
            run["threads"] = threads
            results.append(run)
            if workers == 2:
                key = executor.register_model(EquiformerCalculator(checkpoint=args.checkpoint))
                list(executor.map(_lookup, [key] * 8, name="warm"))
                start = time.perf_counter()
                outs = list(executor.map(_lookup, [key] * args.overhead_tasks, name="overhead"))
                overhead["dask"] = (time.perf_counter() - start) / args.overhead_tasks
                assert all(o.error is None for o in outs)
    serial = SerialExecutor()
    key = serial.register_model(EquiformerCalculator(checkpoint=args.checkpoint))
    start = time.perf_counter()
    list(serial.map(_lookup, [key] * args.overhead_tasks))
    overhead["serial"] = (time.perf_counter() - start) / args.overhead_tasks
    load = os.getloadavg()[0]

    def same(run: dict) -> str:
        if "threads" not in run:
            return "n/a"
        reference = references[run["threads"]]["rows"]
        rows = run["rows"]
        ok = sorted(rows) == sorted(reference) and all(
            rows[k].get("relaxed_energy") == reference[k].get("relaxed_energy")
            and np.array_equal(rows[k].positions, reference[k].positions) for k in rows
        )
        return "yes" if ok else "NO"

    lines = [
        SECTION, "",
        _common.machine_line(),
        _common.versions_line(["torch", "dask", "distributed", "ase"]),
        f"Command: `python benchmarks/dask_screening.py {shlex.join(sys.argv[1:])}`", "",
        f"Workload: screening {', '.join(slabs)} ({args.size} slabs, bottom 2 layers fixed) x {', '.join(adsorbates)} "
        f"on every symmetry-distinct site, plus the 4 gas references and the clean slabs: {results[0]['n']} FIRE "
        f"relaxations, fmax 0.05, at most {args.steps} steps; model: {args.checkpoint or 'shipped emt-small'}, "
        f"float32. Dask tasks are chunks of {args.chunk_size} relaxations, each one `relax_batch` call on the "
        "worker's model (one batched model call per step); the client writes the database. Torch threads: "
        f"{cores} in-process, cores // workers on the cluster.",
        "",
        "| run | relaxations | optimizer steps | wall (s) | relaxations/s | numbers == SerialExecutor run with "
        "the same torch threads |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(f"| {r['tag']} | {r['n']} | {r['steps']} | {r['wall']:.1f} | {r['n'] / r['wall']:.2f} | "
                     f"{same(r)} |")
    lines += [
        "",
        f"Cluster start-up (not in the wall times): {startup[1]:.1f} s for 1 worker, {startup[2]:.1f} s for 2 "
        "(process spawn, torch import).",
        f"Per-task overhead (a task that only looks up the worker's model, {args.overhead_tasks} tasks): "
        f"{overhead['dask'] * 1e3:.1f} ms per task on the 2-worker LocalCluster vs {overhead['serial'] * 1e3:.3f} ms "
        "in-process: a task should carry seconds of work (a chunk of relaxations), not one model call.",
        f"1-minute load average at the end: {load:.1f} on {cores} cores." + (f" {args.note}" if args.note else ""),
        "Float32 numbers are a function of the chunks (which structures share a batched model call) and of "
        "torch's intra-op thread count (parallel reductions): the in-process row (one `relax_batch` call per "
        "phase) differs from the chunked runs in the last bits, and a Dask run equals the in-process "
        "SerialExecutor run with the same chunks and threads per process exactly, however many workers.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.update_results:
        _common.update_section(args.update_results, SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
