#!/usr/bin/env python
"""Where the time of one energy+forces call goes: a profile of the model on this machine.

For each (model size, structure) case, one energy+forces call (forward + autograd forces, float32,
prebuilt radius graph, as in ``benchmarks/speed.py``) is split three ways:

1. forward vs backward (forces): wall time of the forward alone and of forward + ``autograd.grad``;
2. forward time by module (inclusive, module forward hooks; ``blocks.*`` summed over the blocks)
   and the part of the forward spent outside modules (edge geometry, spherical harmonics, radial
   basis, the energy sum);
3. the whole call by operator (``torch.profiler`` self CPU time of each aten operator and autograd
   backward node, forward and backward together), the top operators with their share.

4. memory: the peak RSS increase per atom of one call in a fresh process (fast and low memory
   mode, ``benchmarks/memory.py``'s worker) and where the memory kept for the backward pass goes:
   the tensors autograd saves during the forward pass (``torch.autograd.graph.saved_tensors_hooks``),
   attributed to the innermost module running when each was saved (storages counted once).

With ``--scaling A,B`` the operator table is also computed for two bulk sizes and the cost of each
operator per edge compared, which shows which operators grow faster than the graph (the log-log
slope above 1 in the "Model speed" section).

Example:
    python benchmarks/profile_model.py --update-results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import _common
import speed  # structures and graph conversion shared with the speed benchmark

log = logging.getLogger("bench.profile")
SECTION = "## Profile"
CASES = [("small", "slab38_co"), ("small", "bulk500"), ("md17-l2", "slab37_open")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per case for the forward/backward split")
    p.add_argument("--top", type=int, default=12, help="operators listed per case")
    p.add_argument("--cases", default=",".join(f"{p}:{c}" for p, c in CASES), help="PRESET:STRUCTURE pairs to profile")
    p.add_argument("--memory-sizes", default="500,2000", help="Cu bulk sizes of the peak-RSS-per-atom rows ('' to skip)")
    p.add_argument("--scaling", default="bulk500,bulk8000", help="two bulk cases for the per-edge operator comparison ('' to skip)")
    p.add_argument("--output", type=Path, help="also write the markdown to this file")
    p.add_argument("--update-results", type=Path, metavar="RESULTS_MD", help=f"write/replace the section '{SECTION}' of this file")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def _model(preset: str):
    import torch

    from equiformer_calc.model import Equiformer
    from equiformer_calc.predictor import Predictor

    torch.manual_seed(0)
    kwargs = {"parity": False} if preset == "md17-l2" else {}
    return Predictor(Equiformer.from_preset(preset, elements=speed.ELEMENTS, **kwargs), dtype="float32").model


def _graph(atoms):
    import torch

    from equiformer_calc.graph import build_graph, structure_from_atoms

    return build_graph(structure_from_atoms(atoms), 5.0, dtype=torch.float32)


def split_forward_backward(model, graph, repeats: int) -> dict[str, float]:
    """Median wall ms of the forward alone and of forward + forces."""
    import torch

    from equiformer_calc.predictor import compute

    def forward():
        with torch.no_grad():
            model(graph.numbers, graph.positions, graph.edge_index, graph.shifts, graph.cell, graph.batch, 1)

    def full():
        with torch.enable_grad():
            compute(model, graph, forces=True)

    out = {}
    for key, fn in (("forward", forward), ("total", full)):
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        out[key] = statistics.median(times)
    return out


def module_times(model, graph, repeats: int) -> tuple[dict[str, float], float]:
    """Inclusive forward ms per module path (block index replaced by '*', summed), and total forward ms."""
    import torch

    starts: dict[str, list[float]] = defaultdict(list)
    totals: dict[str, float] = defaultdict(float)
    handles = []
    for name, module in model.named_modules():
        if not name or name.count(".") > 3:
            continue
        key = re.sub(r"blocks\.\d+", "blocks.*", name)

        def pre(_m, _i, key=key):
            starts[key].append(time.perf_counter())

        def post(_m, _i, _o, key=key):
            totals[key] += time.perf_counter() - starts[key].pop()

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        with torch.no_grad():
            model(graph.numbers, graph.positions, graph.edge_index, graph.shifts, graph.cell, graph.batch, 1)
            totals.clear()
            t0 = time.perf_counter()
            for _ in range(repeats):
                model(graph.numbers, graph.positions, graph.edge_index, graph.shifts, graph.cell, graph.batch, 1)
            forward = (time.perf_counter() - t0) / repeats * 1e3
    finally:
        for h in handles:
            h.remove()
    return {k: v / repeats * 1e3 for k, v in totals.items()}, forward


def operator_times(model, graph) -> tuple[dict[str, tuple[float, int]], float]:
    """Self CPU ms and call count per operator over one energy+forces call, and the call's wall ms."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from equiformer_calc.predictor import compute

    with torch.enable_grad():
        compute(model, graph, forces=True)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            compute(model, graph, forces=True)
            wall = (time.perf_counter() - t0) * 1e3
    ops = {}
    for ev in prof.key_averages():
        ms = ev.self_cpu_time_total / 1e3
        if ms > 0:
            ops[ev.key] = (ms, ev.count)
    return ops, wall


def _caller() -> str:
    """The innermost function of equiformer_calc on the Python stack (where a tensor was saved)."""
    frame = sys._getframe(2)
    while frame is not None:
        if "equiformer_calc" in frame.f_code.co_filename:
            return getattr(frame.f_code, "co_qualname", frame.f_code.co_name).split(".")[-1] + "()"
        frame = frame.f_back
    return "?"


def _pop(stack: list[str]):
    def hook(_module, _inputs, _output) -> None:  # returns None: the module's output is kept
        stack.pop()

    return hook


def saved_tensors_by_module(model, graph, memory: str = "fast") -> tuple[dict[str, int], int]:
    """Bytes of the tensors autograd saves in one forward pass with forces (each storage counted
    once), by the innermost module path active when saved (block index replaced by '*'), and the
    total. ``memory``: 'fast' or 'low' (low mode keeps only the chunks' inputs)."""
    import torch

    from equiformer_calc.predictor import LOW_MEMORY_EDGE_CHUNK

    stack: list[str] = []
    by_module: dict[str, int] = defaultdict(int)
    seen: set[int] = set()
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue
        key = re.sub(r"blocks\.\d+", "blocks.*", name)
        handles.append(module.register_forward_pre_hook(lambda _m, _i, key=key: stack.append(key)))
        handles.append(module.register_forward_hook(_pop(stack)))

    def pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            by_module[f"{stack[-1] if stack else 'outside modules'} · {_caller()}"] += storage.nbytes()
        return t

    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            pos = graph.positions.detach().requires_grad_(True)
            model(graph.numbers, pos, graph.edge_index, graph.shifts, graph.cell, graph.batch, 1,
                  edge_chunk=LOW_MEMORY_EDGE_CHUNK if memory == "low" else None)
    finally:
        for h in handles:
            h.remove()
    return dict(by_module), sum(by_module.values())


def saved_table(by_module: dict[str, int], total: int, atoms: int, edges: int, top: int) -> str:
    rows = []
    for key, nbytes in sorted(by_module.items(), key=lambda kv: -kv[1])[:top]:
        rows.append([f"`{key}`", f"{nbytes / 2**20:.1f}", f"{nbytes / edges:.0f}", _pct(nbytes, total)])
    rest = total - sum(v for _, v in sorted(by_module.items(), key=lambda kv: -kv[1])[:top])
    rows.append(["all other modules", f"{rest / 2**20:.1f}", f"{rest / edges:.0f}", _pct(rest, total)])
    rows.append(["**total**", f"{total / 2**20:.1f}", f"{total / edges:.0f}", "100%"])
    return speed.table(["module (innermost, blocks summed) · function", "saved MB", "bytes / edge", "share"], rows)


def peak_rss(atoms: int, mode: str, threads: int) -> dict | None:
    """Peak RSS increase of one energy+forces call on a Cu bulk of ``atoms`` atoms, fresh process."""
    import tempfile

    import memory

    args = argparse.Namespace(preset="small", threads=threads, repeats=0)
    return memory.run_worker("call", args, atoms, mode, Path(tempfile.mkdtemp(prefix="equiformer-profile-")))


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def _depth(key: str) -> int:
    return key.count(".") - (1 if key.startswith("blocks.*") else 0)


def module_table(modules: dict[str, float], forward: float) -> str:
    """Top-level modules, the parts of a Transformer block and the parts of its attention and FFN;
    'rest of X' is X's time outside its listed children (the tensor products, which run through
    fused functions rather than module calls, the softmax and the scatter to the nodes)."""

    def listed(key: str) -> bool:
        d = _depth(key)
        return d == 0 or (d == 1 and key.startswith("blocks.*.")) or (
            d == 2 and key.startswith(("blocks.*.attn.", "blocks.*.ffn.")))

    keys = [k for k in modules if listed(k) and k != "blocks"]
    rows = []

    def add(key: str) -> None:
        children = sorted((k for k in keys if k.startswith(key + ".") and _depth(k) == _depth(key) + 1), key=lambda k: -modules[k])
        indent = "&nbsp;&nbsp;" * _depth(key)
        rows.append([f"{indent}`{key}`", f"{modules[key]:.1f}", _pct(modules[key], forward)])
        for child in children:
            add(child)
        if children:
            rest = max(0.0, modules[key] - sum(modules[c] for c in children))
            rows.append([f"{indent}&nbsp;&nbsp;rest of `{key}`", f"{rest:.1f}", _pct(rest, forward)])

    for key in sorted((k for k in keys if _depth(k) == 0), key=lambda k: -modules[k]):
        add(key)
    top_level = sum(modules[k] for k in keys if _depth(k) == 0)
    rows.append(["outside modules (edge vectors, spherical harmonics, energy sum)",
                 f"{max(0.0, forward - top_level):.1f}", _pct(max(0.0, forward - top_level), forward)])
    return speed.table(["module (forward, inclusive)", "ms", "% of forward"], rows)


def operator_table(ops: dict[str, tuple[float, int]], top: int) -> str:
    total = sum(ms for ms, _ in ops.values())
    rows = []
    for key, (ms, count) in sorted(ops.items(), key=lambda kv: -kv[1][0])[:top]:
        rows.append([f"`{key}`", str(count), f"{ms:.1f}", _pct(ms, total)])
    rest = total - sum(ms for ms, _ in sorted(ops.values(), key=lambda v: -v[0])[:top])
    rows.append(["all other operators", "", f"{rest:.1f}", _pct(rest, total)])
    return speed.table(["operator (forward + backward, self CPU)", "calls", "ms", "share"], rows)


def scaling_table(small: tuple, large: tuple, top: int) -> tuple[str, float]:
    (ops_a, edges_a, name_a), (ops_b, edges_b, name_b) = small, large
    total_a = sum(ms for ms, _ in ops_a.values())
    total_b = sum(ms for ms, _ in ops_b.values())
    keys = sorted(set(ops_a) | set(ops_b), key=lambda k: -ops_b.get(k, (0.0, 0))[0])[:top]
    rows = []
    for key in keys:
        a = ops_a.get(key, (0.0, 0))[0] / edges_a * 1e6
        b = ops_b.get(key, (0.0, 0))[0] / edges_b * 1e6
        extra = ops_b.get(key, (0.0, 0))[0] - a * edges_b / 1e6
        rows.append([f"`{key}`", f"{a:.2f}", f"{b:.2f}", f"{b / a:.2f}" if a else "-", f"{extra:+.0f}"])
    ta, tb = total_a / edges_a * 1e6, total_b / edges_b * 1e6
    rows.append(["all operators", f"{ta:.2f}", f"{tb:.2f}", f"{tb / ta:.2f}", f"{total_b - ta * edges_b / 1e6:+.0f}"])
    header = ["operator", f"ns / edge, {name_a}", f"ns / edge, {name_b}", "ratio",
              f"extra ms at {name_b} vs {name_a}'s per-edge cost"]
    return speed.table(header, rows), tb / ta


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, str(speed.ROOT))
    import torch

    from equiformer_calc.runtime import configure_runtime

    configure_runtime()
    torch.set_num_threads(args.threads)
    scaling = [c for c in args.scaling.split(",") if c]
    structures = speed.build_structures(quick="bulk8000" not in scaling)
    models: dict = {}
    parts = [
        SECTION,
        "",
        _common.machine_line(),
        _common.versions_line(["torch", "e3nn", "numpy"]) + f" Threads: {args.threads}.",
        f"Command: `python benchmarks/profile_model.py{' ' + ' '.join(argv if argv is not None else sys.argv[1:]) if (argv or sys.argv[1:]) else ''}`",
        "",
        "One energy+forces call (forward + autograd forces, float32, prebuilt 5 A graph) as in the "
        "Model speed section, split by stage and by operator. Module times come from forward hooks "
        "(inclusive, summed over the blocks, hook overhead included), operator times from `torch.profiler` (self CPU time, "
        "forward and backward of one call; profiler overhead included, so the sums exceed the plain "
        "wall time).",
    ]
    for preset, name in (c.split(":") for c in args.cases.split(",") if c):
        atoms, desc = structures[name]
        model = models.setdefault(preset, _model(preset))
        graph = _graph(atoms)
        log.info("%s on %s (%d atoms, %d edges)", preset, name, graph.num_atoms, graph.num_edges)
        split = split_forward_backward(model, graph, args.repeats)
        modules, forward = module_times(model, graph, args.repeats)
        ops, wall = operator_times(model, graph)
        saved, saved_total = saved_tensors_by_module(model, graph, "fast")
        _, saved_low = saved_tensors_by_module(model, graph, "low")
        parts += [
            "",
            f"### '{preset}' model, {desc} ({graph.num_atoms} atoms, {graph.num_edges} edges)",
            "",
            f"Median over {args.repeats} calls: forward {split['forward']:.1f} ms, forward + forces "
            f"{split['total']:.1f} ms, so the backward pass for the forces is "
            f"{_pct(split['total'] - split['forward'], split['total'])} of the call. Profiled call: {wall:.0f} ms.",
            "",
            module_table(modules, forward),
            "",
            operator_table(ops, args.top),
            "",
            f"Memory kept for the backward pass (tensors saved by autograd in the forward pass): {saved_total / 2**20:.1f} MB, "
            f"{saved_total / graph.num_atoms / 1024:.0f} KB per atom, {saved_total / max(graph.num_edges, 1):.0f} bytes per "
            f"edge in fast mode; {saved_low / 2**20:.1f} MB ({saved_low / max(graph.num_edges, 1):.0f} bytes per edge) in "
            "low-memory mode, which keeps only the shared edge geometry and recomputes each chunk in the backward pass.",
            "",
            saved_table(saved, saved_total, graph.num_atoms, max(graph.num_edges, 1), args.top),
        ]
    if len(scaling) == 2:
        measured = []
        for name in scaling:
            atoms, desc = structures[name]
            graph = _graph(atoms)
            log.info("scaling: small on %s (%d atoms, %d edges)", name, graph.num_atoms, graph.num_edges)
            ops, wall = operator_times(models.setdefault("small", _model("small")), graph)
            measured.append((ops, graph.num_edges, name))
        text, ratio = scaling_table(measured[0], measured[1], args.top)
        parts += [
            "",
            f"### Per-edge cost by operator, '{scaling[0]}' vs '{scaling[1]}' ('small' model)",
            "",
            "Self CPU time per edge of the same operators at two sizes (one profiled call each, after one "
            "warm-up call). A ratio above 1 is an operator whose cost grows faster than the number of "
            f"edges; the last column is the time it adds at {scaling[1]} over linear scaling. Whole call: "
            f"{ratio:.2f}x the per-edge cost at {scaling[0]}. Compare with the plain timings of the Model "
            "speed section (several calls, no profiler): the operators that grow are the ones that write "
            "large new tensors (mul, cat, add), i.e. memory traffic and page faults on multi-GB "
            "allocations, which the profiler's single call exaggerates.",
            "",
            text,
        ]
    sizes = [int(x) for x in args.memory_sizes.split(",") if x]
    if sizes:
        rows = []
        for n in sizes:
            for mode in ("fast", "low"):
                r = peak_rss(n, mode, args.threads)
                if r and "error" not in r:
                    rows.append([str(n), str(r["edges"]), mode, f"{r['delta'] / 2**20:.0f}", f"{r['delta'] / 1024 / n:.0f}",
                                 f"{r['delta'] / r['edges']:.0f}"])
        parts += [
            "",
            "### Peak memory per atom ('small' model, Cu bulk)",
            "",
            "Peak RSS increase of one energy+forces call (`ru_maxrss` minus the RSS before the call, model and graph "
            "built, fresh process per row; `benchmarks/memory.py` measures more sizes and the time).",
            "",
            speed.table(["atoms", "edges", "memory mode", "peak RSS increase (MB)", "KB / atom", "bytes / edge"], rows, left=0),
        ]
    body = "\n".join(parts) + "\n"
    print(body)
    if args.output:
        args.output.write_text(body)
    if args.update_results:
        _common.update_section(args.update_results, SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
