#!/usr/bin/env python
"""Model speed: energy+forces timings of equiformer_calc, side by side with other models.

Times one energy+forces evaluation (model forward + autograd forces, float32, radius graph
prebuilt and not timed) of

  (a) the md17-l2 preset with SE(3) irreps (the reference Equiformer's layer sizes, 3.5M
      parameters) on a 37-atom Cu(111)+O slab without periodicity (612 edges at 5 A) and a
      256-atom Cu cluster, next to the reference implementation when ``--reference-cmd`` is given;
  (b) the shipped-size model (preset 'small', E(3)) on the periodic 37-atom slab and 500-atom Cu
      bulk, next to MACE when ``--mace-cmd`` is given;
  (c) the shipped-size model on a 38-atom Cu(111)+CO slab and periodic Cu bulk of 500, 2,000 and
      8,000 atoms: ms per call, cost per atom, log-log scaling exponent, end-to-end
      ``Predictor.predict`` time (graph included) and peak memory (RSS increase during one call,
      each size in a fresh process);
  (d) batched prediction of 64 small structures, ``Predictor.predict(list)`` against a loop of
      one-structure calls.

Every model runs in its own subprocess ("runner") on the same structures and edges; runners
take turns for ``--rounds`` rounds so that a changing background load hits all of them alike.
Our own code is timed by this script in worker mode (``--worker``); ``--baseline-src DIR`` adds a
column for another checkout of equiformer_calc (e.g. before an optimisation). External models
are timed by commands given on the command line, which must follow the protocol below; this
repository contains no code of the other projects, see benchmarks/RESULTS.md ("Model speed")
for how the comparison environments and their drivers were set up.

Driver protocol: the command is run with ``--input CASES.npz --output RESULT.json --threads N
--repeats R --max-seconds S --only NAME[,NAME...]`` appended. CASES.npz holds ``names`` and, for
every case NAME, ``NAME_numbers`` (N,), ``NAME_positions`` (N, 3) in A, ``NAME_cell`` (3, 3),
``NAME_pbc`` (3,), ``NAME_edge_src`` / ``NAME_edge_dst`` (E,) and ``NAME_shifts`` (E, 3) integer cell
shifts, with edge vector ``pos[src] - pos[dst] + shifts @ cell`` (src = neighbour j, dst = centre
i). RESULT.json must be ``{"n_params": int, "cases": {NAME: {"ms": [...], "cpu_ms": [...]}}}``:
wall and CPU (process) milliseconds of each timed call after one untimed warm-up call.

Example:
    python benchmarks/speed.py --update-results benchmarks/RESULTS.md \\
        --reference-cmd "/tmp/refvenv/bin/python /tmp/speedwork/ref_driver.py --src /tmp/equiformer-src" \\
        --mace-cmd "/tmp/macevenv/bin/python /tmp/speedwork/mace_driver.py"
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: E402  (benchmarks/_common.py, beside this script)

log = logging.getLogger("bench.speed")

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Model speed"
POLICY_SECTION = "## Thread policy"
ELEMENTS = ["H", "C", "N", "O", "Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au"]
REFERENCE_CASES = ["slab37_open", "cluster256"]
MACE_CASES = ["slab37", "bulk500"]
SCALING_CASES = ["slab38_co", "bulk500", "bulk2000", "bulk8000"]
BULK_REPEATS = {"bulk500": (5, 5, 5), "bulk2000": (5, 10, 10), "bulk8000": (10, 10, 20)}

SETUP_NOTES = """\
How the comparison runs were set up (none of this is in the repository; the drivers follow the
protocol in the docstring of `benchmarks/speed.py` and were kept outside it):

```bash
# (a) reference Equiformer (github.com/atomicarchitects/equiformer), unmodified source tree
python3 -m venv /tmp/refvenv
/tmp/refvenv/bin/pip install torch==2.13.0          # the CPU build, same as the project's venv
/tmp/refvenv/bin/pip install e3nn==0.4.4 torch_geometric ase numpy   # e3nn version the reference pins
#   source tree: /tmp/equiformer-src (a copy of the repository at its default branch)
#   torch_cluster / torch_scatter / ocpmodels are not installable here: small stand-ins on
#   PYTHONPATH provide scatter-sum (index_add) and an O(N^2) radius_graph (unused: edges are passed)
#   driver: imports nets/graph_attention_transformer_md17.py without nets/__init__ (which needs
#   ocpmodels), builds graph_attention_transformer_nonlinear_exp_l2_md17(irreps_in='64x0e',
#   radius=5.0, num_basis=32) (3,496,001 parameters), and times the body of its forward() with the
#   given edges: forward + torch.autograd.grad for forces with create_graph=False (the reference's
#   own forward() uses create_graph=True, for training). TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 lets
#   e3nn 0.4.4 load its constants with torch 2.13.
# (b) MACE
python3 -m venv /tmp/macevenv
/tmp/macevenv/bin/pip install torch==2.13.0
/tmp/macevenv/bin/pip install mace-torch ase          # mace-torch 0.3.16 (pins e3nn 0.4.4)
#   driver: mace.modules.ScaleShiftMACE with random weights, the size of mace-mp-0 "small":
#   hidden_irreps 128x0e, max_ell 3, correlation 3, 2 interactions
#   (RealAgnosticResidualInteractionBlock), r_max 5, 8 Bessel functions, polynomial cutoff p=5,
#   radial MLP [64, 64, 64], MLP_irreps 16x0e, 11 elements (722,448 parameters), avg_num_neighbors
#   40, zero atomic energies, scale 1, shift 0; times model(batch, compute_force=True). MACE's edge
#   vector is pos[receiver] - pos[sender] + shifts, so edge_index = [dst; src] of the cases file.
#   It pins e3nn 0.4.4 too, so TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 is needed here as well.
# Both drivers put the model in eval mode with frozen weights (forces only w.r.t. positions, as our
# Predictor does), and were checked (2026-11-29): the given edges reproduce each program's own
# neighbour list energy and forces (|dE| <= 4e-16 eV), forces match central finite differences of its
# energy (float64, relative error <= 5e-8), and MACE with sender/receiver swapped gives another energy.
# The reference source came from the bare git mirror: git --git-dir=<mirror>/repo archive HEAD (64cb786);
# its module imports ocpmodels' RadialBasis at import time (a stand-in that raises if built: this
# model uses the 'exp' basis).
```"""


# ---------------------------------------------------------------------------------------- setup
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 repeats, 1 round, no 256-atom cluster and no 8,000-atom bulk")
    p.add_argument("--threads", type=int, default=0,
                   help="torch/OpenMP threads of every runner; 0 (default): the package's policy per call "
                        "(equiformer_calc.runtime.call_threads; external drivers get all cores)")
    p.add_argument("--repeats", type=int, default=6, help="timed calls per case and runner, split over the rounds")
    p.add_argument("--rounds", type=int, default=2, help="runners take turns this many times")
    p.add_argument("--max-seconds", type=float, default=90.0, help="per case and round: stop repeating after this long (min 2 calls)")
    p.add_argument(
        "--omp-wait-policy",
        default="",
        help="OMP_WAIT_POLICY of our runners; '' (default) leaves it and GOMP_SPINCOUNT unset, so the package "
        "chooses at import (equiformer_calc.runtime.default_openmp_env: a brief spin on a quiet machine, PASSIVE when "
        "another process is busy)",
    )
    p.add_argument(
        "--external-wait-policy",
        default="",
        help="OMP_WAIT_POLICY of the external drivers (reference, MACE); '' (default) leaves it unset, i.e. "
        "libgomp's own default (spin, then sleep), which is what those programs get out of the box and their "
        "fastest setting on a quiet machine",
    )
    p.add_argument("--reference-cmd", help="timing command of the reference Equiformer (driver protocol above)")
    p.add_argument("--mace-cmd", help="timing command of MACE (driver protocol above)")
    p.add_argument("--baseline-src", type=Path, help="another source tree of equiformer_calc to time as 'before'")
    p.add_argument("--baseline-max-atoms", type=int, default=2500, help="skip larger structures for the baseline (memory)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    p.add_argument("--no-batch", action="store_true", help="skip the batching comparison")
    p.add_argument("--no-policy", action="store_true", help="skip the thread-policy table")
    p.add_argument(
        "--policy-only", action="store_true",
        help="only the thread-policy table: every (threads, OMP_WAIT_POLICY) setting on the machine as it is and "
        "with competing busy processes, next to the policy of equiformer_calc.runtime",
    )
    p.add_argument("--policy-cases", default="slab38_co,bulk500,bulk2000", help="structures of the thread-policy table")
    p.add_argument("--competitors", type=int, default=0,
                   help="busy processes started for the 'others compete' regime (default: as many as cores)")
    p.add_argument("--output", type=Path, help="also write the markdown to this file")
    p.add_argument("--json", type=Path, help="write all raw timings to this JSON file")
    p.add_argument("--update-results", type=Path, metavar="RESULTS_MD", help=f"write/replace the section '{SECTION}' of this file")
    p.add_argument("-v", "--verbose", action="store_true")
    # worker mode (internal): time our model in this process
    p.add_argument("--worker", choices=["time", "memory", "batch", "threads"], help=argparse.SUPPRESS)
    p.add_argument("--src", type=Path, default=ROOT, help=argparse.SUPPRESS)
    p.add_argument("--preset", default="small", help=argparse.SUPPRESS)
    p.add_argument("--se3", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--end-to-end", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--only", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def thread_env(threads: int, wait_policy: str, spin_count: str = "") -> dict[str, str]:
    """This environment with the given threads, OMP_WAIT_POLICY and GOMP_SPINCOUNT ('' or 0: unset)."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        if threads > 0:
            env[var] = str(threads)
        else:
            env.pop(var, None)
    for var, value in (("OMP_WAIT_POLICY", wait_policy), ("GOMP_SPINCOUNT", spin_count)):
        if value:
            env[var] = value
        else:
            env.pop(var, None)
    return env


def build_structures(quick: bool) -> dict:
    """name -> (ase.Atoms, description)."""
    import numpy as np
    from ase import Atoms
    from ase.build import add_adsorbate, bulk, fcc111

    out = {}
    slab = fcc111("Cu", size=(3, 3, 4), vacuum=8.0)
    add_adsorbate(slab, "O", 1.2, "fcc")
    slab.rattle(0.01, seed=43)
    open_slab = slab.copy()
    open_slab.pbc = False
    out["slab37_open"] = (open_slab, "Cu(111) 3x3x4 + O, no pbc")
    out["slab37"] = (slab, "Cu(111) 3x3x4 + O, pbc TTF")
    co = fcc111("Cu", size=(3, 3, 4), vacuum=8.0)
    add_adsorbate(co, Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.15]]), 1.85, "ontop")
    co.rattle(0.01, seed=44)
    out["slab38_co"] = (co, "Cu(111) 3x3x4 + CO, pbc TTF")
    if not quick:
        cluster = bulk("Cu", "fcc", a=3.615, cubic=True).repeat((4, 4, 4))
        cluster.rattle(0.01, seed=42)
        cluster.pbc = False
        out["cluster256"] = (cluster, "Cu fcc cluster 4x4x4 cells, no pbc")
    for name, reps in BULK_REPEATS.items():
        if quick and name == "bulk8000":
            continue
        atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(reps)
        atoms.rattle(0.01, seed=42)
        out[name] = (atoms, f"Cu fcc bulk {'x'.join(map(str, reps))}, pbc TTT")
    for atoms, _ in out.values():
        atoms.positions = np.ascontiguousarray(atoms.positions)
    return out


def write_cases(structures: dict, path: Path) -> dict[str, dict]:
    """The npz of the driver protocol; returns name -> {atoms, edges, pbc, description}."""
    import numpy as np

    from equiformer_calc.graph import neighbor_list, structure_from_atoms

    arrays: dict[str, np.ndarray] = {}
    info = {}
    for name, (atoms, desc) in structures.items():
        i, j, shifts = neighbor_list(structure_from_atoms(atoms), 5.0)
        arrays[f"{name}_numbers"] = atoms.numbers.astype(np.int64)
        arrays[f"{name}_positions"] = atoms.positions.astype(np.float64)
        arrays[f"{name}_cell"] = atoms.cell.array.astype(np.float64)
        arrays[f"{name}_pbc"] = atoms.pbc.astype(bool)
        arrays[f"{name}_edge_src"] = j
        arrays[f"{name}_edge_dst"] = i
        arrays[f"{name}_shifts"] = shifts.astype(np.int64)
        info[name] = dict(atoms=len(atoms), edges=int(len(i)), pbc="".join("T" if p else "F" for p in atoms.pbc), description=desc)
    arrays["names"] = np.array(list(structures))
    np.savez(path, **arrays)
    return info


# ---------------------------------------------------------------------------------------- workers
def _import_ours(src: Path):
    sys.path.insert(0, str(src))
    import equiformer_calc

    if not Path(equiformer_calc.__file__).resolve().is_relative_to(src.resolve()):
        raise SystemExit(f"imported equiformer_calc from {equiformer_calc.__file__}, not from {src}")
    return equiformer_calc


def _our_model(args):
    import torch

    from equiformer_calc.model import Equiformer
    from equiformer_calc.predictor import Predictor

    torch.manual_seed(0)
    kwargs = {"parity": False} if args.se3 else {}
    model = Equiformer.from_preset(args.preset, elements=ELEMENTS, **kwargs)
    # Predictor applies the runtime settings, float32, eval mode and frozen parameters
    return Predictor(model, dtype="float32")


def _graph(data, name: str):
    import torch

    from equiformer_calc.graph import AtomicGraph

    n = len(data[f"{name}_numbers"])
    return AtomicGraph(
        numbers=torch.from_numpy(data[f"{name}_numbers"]).long(),
        positions=torch.from_numpy(data[f"{name}_positions"]).float(),
        cell=torch.from_numpy(data[f"{name}_cell"]).float().unsqueeze(0),
        pbc=torch.from_numpy(data[f"{name}_pbc"]).unsqueeze(0),
        edge_index=torch.stack([torch.from_numpy(data[f"{name}_edge_src"]), torch.from_numpy(data[f"{name}_edge_dst"])]).long(),
        shifts=torch.from_numpy(data[f"{name}_shifts"]).float(),
        batch=torch.zeros(n, dtype=torch.long),
        ptr=torch.tensor([0, n]),
    )


def _structure(data, name: str):
    from equiformer_calc.graph import Structure

    return Structure.from_arrays(data[f"{name}_numbers"], data[f"{name}_positions"], data[f"{name}_cell"], data[f"{name}_pbc"])


def _timed(fn, repeats: int, max_seconds: float) -> tuple[list[float], list[float]]:
    fn()  # warm-up
    wall, cpu = [], []
    start = time.perf_counter()
    for k in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
        if k >= 1 and time.perf_counter() - start > max_seconds:
            break
    return wall, cpu


def worker_time(args) -> dict:
    import numpy as np
    import torch

    _import_ours(args.src)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    predictor = _our_model(args)
    data = np.load(args.input)
    names = args.only.split(",") if args.only else [str(s) for s in data["names"]]
    result = {"n_params": predictor.model.num_parameters(), "cases": {}}
    for name in names:
        graph = _graph(data, name)
        call = _policy_call(predictor, graph, args.threads <= 0)

        wall, cpu = _timed(call, args.repeats, args.max_seconds)
        case = {"ms": wall, "cpu_ms": cpu, "atoms": graph.num_atoms, "edges": graph.num_edges}
        if args.end_to_end:
            structure = _structure(data, name)
            case["e2e_ms"], _ = _timed(lambda: predictor.predict([structure]), max(2, args.repeats // 2), args.max_seconds)
        result["cases"][name] = case
        log.info("  %s: %d atoms, median %.1f ms", name, graph.num_atoms, float(np.median(wall)))
    return result


def _policy_call(predictor, graph, default_policy: bool, used: list[int] | None = None):
    """One energy+forces call of ``predictor``'s model on ``graph``; with ``default_policy`` on the
    threads the package's policy picks at each call (``runtime.call_threads``, appended to ``used``)."""
    import torch

    from equiformer_calc.predictor import compute
    from equiformer_calc.runtime import call_threads

    def call():
        with torch.enable_grad():
            if not default_policy:
                return compute(predictor.model, graph, forces=True)
            with call_threads(graph.num_edges) as threads:
                if used is not None:
                    used.append(threads)
                return compute(predictor.model, graph, forces=True)

    return call


def _cores() -> int:
    from equiformer_calc.runtime import available_cores

    return available_cores()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker_memory(args) -> dict:
    """Peak RSS increase during the first energy+forces call on one structure (fresh process)."""
    import resource

    import numpy as np
    import torch

    _import_ours(args.src)
    from equiformer_calc.predictor import compute

    torch.set_num_threads(args.threads if args.threads > 0 else _cores())
    predictor = _our_model(args)
    data = np.load(args.input)
    name = args.only
    graph = _graph(data, name)
    before = _rss_bytes()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.enable_grad():
        compute(predictor.model, graph, forces=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"cases": {name: {"rss_before": before, "peak": max(peak, peak_before), "delta": max(peak - before, 0), "atoms": graph.num_atoms}}}


def batch_structures(count: int = 64) -> list:
    """64 small structures of four kinds (8-13 atoms), each rattled differently."""
    import numpy as np
    from ase.build import add_adsorbate, bulk, fcc111, molecule

    out = []
    for k in range(count):
        kind = k % 4
        if kind == 0:
            atoms = bulk("Cu", "fcc", a=3.62, cubic=True) * (1, 1, 2)
        elif kind == 1:
            atoms = bulk("Pd", "fcc", a=3.89) * (2, 2, 2)
        elif kind == 2:
            atoms = fcc111("Cu", (2, 2, 3), vacuum=6.0)
            add_adsorbate(atoms, "O", 1.7, "fcc")
        else:
            atoms = molecule("CH3CH2OH")
        atoms.rattle(0.05, seed=100 + k)
        atoms.positions = np.ascontiguousarray(atoms.positions)
        out.append(atoms)
    return out


def worker_batch(args) -> dict:
    import numpy as np
    import torch

    _import_ours(args.src)
    torch.set_num_threads(args.threads if args.threads > 0 else _cores())
    predictor = _our_model(args)
    structures = batch_structures()
    n_atoms = sum(len(a) for a in structures)

    def loop():
        return [predictor.predict([a])[0] for a in structures]

    def batched():
        return predictor.predict(structures)

    # same numbers either way
    one = loop()
    many = batched()
    err = max(float(np.abs(a["forces"] - b["forces"]).max()) for a, b in zip(one, many))
    loop_ms, loop_cpu = _timed(loop, max(2, args.repeats // 2), args.max_seconds)
    batch_ms, batch_cpu = _timed(batched, max(3, args.repeats), args.max_seconds)
    return {
        "structures": len(structures),
        "atoms": n_atoms,
        "max_force_difference": err,
        "loop_ms": loop_ms,
        "loop_cpu_ms": loop_cpu,
        "batch_ms": batch_ms,
        "batch_cpu_ms": batch_cpu,
    }


def worker_threads(args) -> dict:
    """Energy+forces ms of the given cases for the thread-policy table. ``args.threads`` > 0: a
    fixed setting, torch imported before the package so that the OpenMP environment is exactly
    the one given; 0: the package's default as users get it (the package imported first, so it
    sets its OpenMP default, and every call on the threads of ``runtime.call_threads``)."""
    import numpy as np

    default = args.threads <= 0
    if not default:  # torch before the package, so that the package leaves the OpenMP environment as given
        importlib.import_module("torch")
    _import_ours(args.src)
    import torch

    if not default:
        torch.set_num_threads(args.threads)
    predictor = _our_model(args)
    data = np.load(args.input)
    out = {"cases": {}, "openmp_env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}}
    for name in args.only.split(","):
        graph = _graph(data, name)
        used: list[int] = []
        wall, cpu = _timed(_policy_call(predictor, graph, default, used), args.repeats, args.max_seconds)
        out["cases"][name] = {"ms": wall, "cpu_ms": cpu, "atoms": graph.num_atoms, "edges": graph.num_edges,
                              "threads_used": used[1:]}  # after the warm-up call
    return out


#: fixed settings of the thread-policy table: (threads, OMP_WAIT_POLICY, GOMP_SPINCOUNT), '' = unset
#: (libgomp's default: spin ~300,000 iterations, then sleep); the package's default is timed beside them
POLICY_SETTINGS = [(1, "", ""), (2, "", ""), (2, "ACTIVE", ""), (2, "PASSIVE", ""), (2, "", "10000")]


def _setting_key(threads: int, wait: str, spin: str) -> str:
    return f"{threads}/" + (f"spin {spin}" if spin else wait or "unset")


def _spinners(count: int) -> list[subprocess.Popen]:
    """``count`` busy-looping processes: the 'others compete for the cores' regime."""
    # each stops by itself when this script's process is gone
    code = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(10)


def run_policy_table(args, info: dict, cases_path: Path, workdir: Path) -> dict:
    """Times every setting of POLICY_SETTINGS on the policy cases, first on the machine as it is,
    then with competing busy processes; returns {regime: {setting: {case: median ms}}}."""
    import numpy as np

    cases = [c for c in args.policy_cases.split(",") if c in info]
    competitors = args.competitors or (os.cpu_count() or 2)
    results: dict[str, dict[str, dict[str, float]]] = {}
    per_round = max(2, math.ceil(args.repeats / args.rounds))
    calls: dict[str, dict[str, dict[str, list[float]]]] = {}
    used: dict[str, dict[str, list[int]]] = {}
    default_env: dict[str, list[str]] = {}
    for regime in ("as is", "competing"):
        procs = _spinners(competitors) if regime == "competing" else []
        try:
            # settings take turns for --rounds rounds (a fresh process each), so that a change in the
            # background load during the regime hits every setting alike
            for _ in range(args.rounds):
                for threads, wait, spin in POLICY_SETTINGS + [(0, "", "")]:
                    env = thread_env(threads, wait, spin)
                    res = run_worker_once("threads", argparse.Namespace(**{**vars(args), "threads": threads, "repeats": per_round}),
                                          env, workdir, ["--input", str(cases_path), "--only", ",".join(cases), "--preset", "small"])
                    key = _setting_key(threads, wait, spin) if threads else "default"
                    for name, c in (res or {"cases": {}})["cases"].items():
                        calls.setdefault(regime, {}).setdefault(key, {}).setdefault(name, []).extend(c["ms"])
                        if key == "default":
                            used.setdefault(regime, {}).setdefault(name, []).extend(c["threads_used"])
                    if key == "default" and res:
                        chosen = res.get("openmp_env", {})
                        text = (f"spin {chosen['GOMP_SPINCOUNT']}" if chosen.get("GOMP_SPINCOUNT")
                                else chosen.get("OMP_WAIT_POLICY") or "unset")
                        seen = default_env.setdefault(regime, [])
                        if text not in seen:
                            seen.append(text)
                    log.info("policy %s %s: %s", regime, key, {n: round(float(np.median(c["ms"])), 1) for n, c in (res or {"cases": {}})["cases"].items()})
        finally:
            _stop(procs)
    results = {regime: {key: {name: float(np.median(ms)) for name, ms in per_case.items()} for key, per_case in by_key.items()}
               for regime, by_key in calls.items()}
    return {"results": results, "calls": calls, "threads_used": used, "competitors": competitors, "cases": cases,
            "default_env": {regime: ", ".join(v) for regime, v in default_env.items()},
            "rounds": args.rounds}


def policy_report(policy: dict, info: dict, load: tuple[float, float], repeats: int, command: str) -> tuple[str, float | None]:
    """The thread-policy table: every fixed setting and the package's default in both regimes, and
    the default's distance to the best fixed setting; returns (markdown, worst ratio)."""
    from equiformer_calc.runtime import SPIN_COUNT

    res, used = policy["results"], policy.get("threads_used", {})
    settings = [_setting_key(*s) for s in POLICY_SETTINGS]
    out = [POLICY_SECTION, "", _common.machine_line(), f"Command: `{command}`", ""]
    out += [
        f"Energy+forces ms (shipped size, float32, median of all timed calls: {policy.get('rounds', 1)} round(s) in which "
        f"the settings take turns, {max(2, math.ceil(repeats / policy.get('rounds', 1)))} calls after a warm-up per round), "
        "each setting in a fresh process, on the machine as it is and with "
        f"{policy['competitors']} busy-looping processes started by the script ('competing'). Fixed settings "
        "'threads/wait' (OMP_WAIT_POLICY, or 'spin N' for GOMP_SPINCOUNT=N; 'unset': libgomp's default, spin ~300,000 "
        "iterations then sleep) import torch first, so the OpenMP environment is exactly that. 'default' is the package "
        "as users get it: imported before torch, so that it chooses the OpenMP wait policy from what else is runnable "
        f"at import (`runtime.default_openmp_env`: GOMP_SPINCOUNT={SPIN_COUNT} on a quiet machine, OMP_WAIT_POLICY=PASSIVE "
        "when another process is busy; 'wait policy' column), torch's default threads, and each call on the threads "
        "`equiformer_calc.runtime.call_threads` picks from the call's size, the wait policy and the CPU time other "
        "processes used since the previous call ('threads used': those counts over the timed calls). "
        "'default / best': its time over the fastest fixed setting of the same row. "
        f"Load average (1 min) at the start {load[0]:.1f}, at the end {load[1]:.1f}.",
        "",
    ]
    header = (["regime", "structure", "atoms", "edges"] + [f"{k} ms" for k in settings]
              + ["default ms", "wait policy", "threads used", "default / best"])
    rows, worst = [], None
    for regime in ("as is", "competing"):
        for name in policy["cases"]:
            i = info[name]
            times = {k: res.get(regime, {}).get(k, {}).get(name) for k in settings}
            mine = res.get(regime, {}).get("default", {}).get(name)
            best = min((t for t in times.values() if t), default=None)
            ratio_ = mine / best if best and mine else None
            if ratio_ is not None:
                worst = max(worst or 0.0, ratio_)
            counts = used.get(regime, {}).get(name, [])
            shown = ", ".join(f"{n}x{t}" for t, n in sorted(((t, counts.count(t)) for t in set(counts)), reverse=True)) or "-"
            rows.append([regime, i["description"], str(i["atoms"]), str(i["edges"])] + [fmt_ms(times[k]) for k in settings]
                        + [fmt_ms(mine), policy.get("default_env", {}).get(regime, "-"), shown, f"{ratio_:.2f}x" if ratio_ else "-"])
    worst_text = f"{worst:.2f}x" if worst is not None else "not measured"
    out += [table(header, rows, left=2), "", f"Worst 'default / best' of this run: {worst_text}.", ""]
    return "\n".join(out), worst


def worker_main(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s worker %(message)s", stream=sys.stderr)
    fn = {"time": worker_time, "memory": worker_memory, "batch": worker_batch, "threads": worker_threads}[args.worker]
    if args.worker != "threads":  # the package before torch, as users get it (it sets its OpenMP default)
        _import_ours(args.src)
    result = fn(args)
    Path(args.output).write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------------------- runners
class Runner:
    def __init__(self, label: str, cmd: list[str], cases: list[str]):
        self.label, self.cmd, self.cases = label, cmd, cases
        self.results: dict[str, dict[str, list[float]]] = {}
        self.n_params: int | None = None
        self.error: str | None = None

    def run(self, cases_path: Path, workdir: Path, args, repeats: int, env: dict[str, str]) -> None:
        if self.error:
            return
        out = workdir / f"{self.label.replace(' ', '_')}-{len(self.results)}-{time.monotonic_ns()}.json"
        # our workers take 0 = the package's thread policy per structure; external drivers all cores
        threads = args.threads if args.threads > 0 or "--worker" in self.cmd else (os.cpu_count() or 1)
        if "--worker" not in self.cmd:  # an external program: its own default wait policy unless told
            env = thread_env(threads, args.external_wait_policy)
        cmd = self.cmd + [
            "--input", str(cases_path), "--output", str(out), "--threads", str(threads),
            "--repeats", str(repeats), "--max-seconds", str(args.max_seconds), "--only", ",".join(self.cases),
        ]
        log.info("%s: %s", self.label, shlex.join(cmd))
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0 or not out.exists():
            self.error = f"exit code {proc.returncode}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}"
            log.error("%s failed (%s)\n%s", self.label, self.error, proc.stderr[-3000:])
            return
        data = json.loads(out.read_text())
        self.n_params = data.get("n_params", self.n_params)
        for name, case in data["cases"].items():
            if "error" in case:
                continue
            slot = self.results.setdefault(name, {})
            for key, values in case.items():
                if isinstance(values, list):
                    slot.setdefault(key, []).extend(values)
        log.info("%s: done in %.0f s", self.label, time.perf_counter() - t0)

    def median(self, name: str, key: str = "ms") -> float | None:
        import numpy as np

        values = self.results.get(name, {}).get(key)
        return float(np.median(values)) if values else None

    def minimum(self, name: str, key: str = "ms") -> float | None:
        values = self.results.get(name, {}).get(key)
        return float(min(values)) if values else None


def our_cmd(src: Path, preset: str, se3: bool, end_to_end: bool = False) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "time", "--src", str(src), "--preset", preset]
    if se3:
        cmd.append("--se3")
    if end_to_end:
        cmd.append("--end-to-end")
    return cmd


def run_worker_once(kind: str, args, env, workdir: Path, extra: list[str], src: Path | None = None) -> dict | None:
    out = workdir / f"{kind}-{time.monotonic_ns()}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--src", str(src or ROOT), "--output", str(out),
           "--threads", str(args.threads), "--repeats", str(args.repeats), "--max-seconds", str(args.max_seconds)] + extra
    log.info("%s: %s", kind, shlex.join(cmd))
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0 or not out.exists():
        log.error("%s worker failed:\n%s", kind, proc.stderr[-3000:])
        return None
    return json.loads(out.read_text())


# ---------------------------------------------------------------------------------------- report
def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


def fmt_rate(atoms: int, ms: float | None) -> str:
    if not ms:
        return "-"
    rate = atoms / (ms / 1e3)
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.1f}"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.1f}x" if a and b else "-"


def table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * left + ["---:"] * (len(header) - left)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def slope(points: list[tuple[int, float]]) -> float | None:
    pts = [(math.log(n), math.log(t)) for n, t in points if t]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def machine_lines(args) -> list[str]:
    return [
        _common.machine_line(),
        _common.versions_line(["torch", "e3nn", "numpy", "ase"])[:-1] + ". Threads per runner: "
        + (f"{args.threads} (torch.set_num_threads and OMP/MKL_NUM_THREADS)" if args.threads > 0 else
           "the package's default policy per call (`equiformer_calc.runtime.call_threads`: all cores, one fewer "
           "for each core other processes keep busy; external drivers: all cores)")
        + (f", OMP_WAIT_POLICY={args.omp_wait_policy} for ours" if args.omp_wait_policy else
           ", the package's own OpenMP default for ours (`runtime.default_openmp_env`, chosen when it is imported: "
           "GOMP_SPINCOUNT=10000 on a quiet machine)") + " and OMP_WAIT_POLICY="
        + f"{args.external_wait_policy or 'unset (their own default)'} for the external drivers.",
    ]


def training_jobs() -> list[str]:
    """Command lines of equiformer-calc training processes running now."""
    jobs = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if "equiformer-calc train" in cmdline or "equiformer_calc.cli train" in cmdline:
            jobs.append(cmdline.split("/")[-1][:100])
    return jobs


def background_note(load_before: tuple, load_after: tuple, jobs_before: list[str], jobs_after: list[str]) -> str:
    text = (
        f"Load average (1 min) {load_before[0]:.1f} before and {load_after[0]:.1f} after the run on "
        f"{os.cpu_count()} cores."
    )
    jobs = jobs_before or jobs_after
    if jobs:
        when = "during the whole run" if jobs_before and jobs_after else "at the start of the run" if jobs_before else "at the end of the run"
        text += (
            f" A training job (`{jobs[0]}`) was running on the same cores ({when}), so absolute times are "
            "inflated and noisy; the runners took turns in the same run, so the ratios between columns are "
            "still meaningful."
        )
    else:
        text += " No training job was running at the start or the end of the run."
    return text


def report(args, info: dict, runners: dict[str, Runner], memory: dict, batch: dict | None, command: str,
           load_before: tuple, load_after: tuple, jobs: tuple[list[str], list[str]] = ([], []),
           policy_worst: float | None = None) -> str:
    ours_a, ours_s = runners["ours_a"], runners["ours_s"]
    base_a, base_s = runners.get("base_a"), runners.get("base_s")
    ref, mace = runners.get("reference"), runners.get("mace")
    out = [SECTION, ""]
    out += machine_lines(args)
    out += [f"Command: `{command}`", "", background_note(load_before, load_after, *jobs), ""]
    out += [
        "One energy+forces call = model forward + autograd forces, float32, on a prebuilt radius graph "
        "(5 A; the neighbour list is timed in the section above). ms: median wall time over all timed calls "
        "of all rounds (after one warm-up call per round); CPU ms: median process CPU time (all threads) of the "
        "same calls, less sensitive to the background load. atom-steps/s = atoms / wall time per call.",
        "",
    ]

    # (a) reference
    out += ["### Reference Equiformer vs equiformer_calc (md17-l2 layer sizes, SE(3))", ""]
    n_ours = ours_a.n_params
    line = f"equiformer_calc `Equiformer.from_preset('md17-l2', parity=False)`: {n_ours:,} parameters" if n_ours else ""
    if ref and ref.n_params:
        line += f"; reference `graph_attention_transformer_nonlinear_exp_l2_md17` (num_basis=32): {ref.n_params:,} parameters"
    if ref and ref.error:
        line += f"; the reference runner failed ({ref.error})"
    if ref is None:
        line += "; reference not run (no `--reference-cmd`)"
    out += [line + ".", ""]
    header = ["structure", "atoms", "edges", "ours ms", "ours CPU ms", "ours atom-steps/s"]
    if base_a:
        header += ["before ms", "before CPU ms"]
    if ref:
        header += ["reference ms", "reference CPU ms", "reference atom-steps/s", "speed-up (wall)", "speed-up (CPU)"]
    rows = []
    for name in REFERENCE_CASES:
        if name not in info:
            continue
        i = info[name]
        row = [i["description"], str(i["atoms"]), str(i["edges"]), fmt_ms(ours_a.median(name)), fmt_ms(ours_a.median(name, "cpu_ms")),
               fmt_rate(i["atoms"], ours_a.median(name))]
        if base_a:
            row += [fmt_ms(base_a.median(name)), fmt_ms(base_a.median(name, "cpu_ms"))]
        if ref:
            row += [fmt_ms(ref.median(name)), fmt_ms(ref.median(name, "cpu_ms")), fmt_rate(i["atoms"], ref.median(name)),
                    ratio(ref.median(name), ours_a.median(name)), ratio(ref.median(name, "cpu_ms"), ours_a.median(name, "cpu_ms"))]
        rows.append(row)
    out += [table(header, rows), ""]

    # (b) MACE
    out += ["### MACE (small size) vs equiformer_calc shipped size ('small', E(3))", ""]
    line = f"equiformer_calc `Equiformer.from_preset('small')`: {ours_s.n_params:,} parameters" if ours_s.n_params else ""
    if mace and mace.n_params:
        line += f"; MACE (128x0e, max_ell 3, correlation 3, 2 interactions, r_max 5, random weights): {mace.n_params:,} parameters"
    if mace and mace.error:
        line += f"; the MACE runner failed ({mace.error})"
    if mace is None:
        line += "; MACE not run (no `--mace-cmd`)"
    out += [line + ".", ""]
    header = ["structure", "atoms", "edges", "ours ms", "ours CPU ms", "ours atom-steps/s"]
    if mace:
        header += ["MACE ms", "MACE CPU ms", "MACE atom-steps/s", "ours / MACE time (wall)", "(CPU)"]
    rows = []
    for name in MACE_CASES:
        if name not in info:
            continue
        i = info[name]
        row = [i["description"], str(i["atoms"]), str(i["edges"]), fmt_ms(ours_s.median(name)), fmt_ms(ours_s.median(name, "cpu_ms")),
               fmt_rate(i["atoms"], ours_s.median(name))]
        if mace:
            row += [fmt_ms(mace.median(name)), fmt_ms(mace.median(name, "cpu_ms")), fmt_rate(i["atoms"], mace.median(name)),
                    ratio(ours_s.median(name), mace.median(name)), ratio(ours_s.median(name, "cpu_ms"), mace.median(name, "cpu_ms"))]
        rows.append(row)
    out += [table(header, rows), ""]

    # (c) shipped size: scaling and memory
    out += ["### Shipped-size model: cost per call, scaling and memory", ""]
    header = ["structure", "atoms", "edges", "ms / call", "CPU ms", "us / atom", "atom-steps/s", "predict() ms (incl. graph)"]
    if base_s:
        header += ["before ms", "before CPU ms"]
    if memory:
        header += ["peak RSS increase (MB)", "KB / atom"]
    rows = []
    for name in SCALING_CASES:
        if name not in info:
            continue
        i = info[name]
        ms = ours_s.median(name)
        row = [i["description"], str(i["atoms"]), str(i["edges"]), fmt_ms(ms), fmt_ms(ours_s.median(name, "cpu_ms")),
               f"{ms * 1e3 / i['atoms']:.0f}" if ms else "-", fmt_rate(i["atoms"], ms), fmt_ms(ours_s.median(name, "e2e_ms"))]
        if base_s:
            row += [fmt_ms(base_s.median(name)), fmt_ms(base_s.median(name, "cpu_ms"))]
        if memory:
            m = memory.get(name)
            row += [f"{m['delta'] / 2**20:.0f}" if m else "-", f"{m['delta'] / 1024 / i['atoms']:.0f}" if m else "-"]
        rows.append(row)
    out += [table(header, rows), ""]
    bulk = [n for n in ("bulk500", "bulk2000", "bulk8000") if n in info]
    s_wall = slope([(info[n]["atoms"], ours_s.median(n)) for n in bulk])
    s_cpu = slope([(info[n]["atoms"], ours_s.median(n, "cpu_ms")) for n in bulk])
    s_mem = slope([(info[n]["atoms"], memory[n]["delta"]) for n in bulk if n in memory]) if memory else None
    if s_wall is not None:
        parts = [f"Scaling exponent (least-squares slope of log time vs log atoms over bulk {', '.join(str(info[n]['atoms']) for n in bulk)} atoms): "
                 f"{s_wall:.2f} (wall), {s_cpu:.2f} (CPU)"]
        if s_mem is not None:
            parts.append(f"; memory: {s_mem:.2f}")
        if base_s:
            b_wall = slope([(info[n]["atoms"], base_s.median(n)) for n in bulk])
            b_cpu = slope([(info[n]["atoms"], base_s.median(n, "cpu_ms")) for n in bulk])
            if b_wall is not None:
                parts.append(f"; before: {b_wall:.2f} (wall), {b_cpu:.2f} (CPU)")
        out += ["".join(parts) + ".", ""]
    if memory:
        out += ["Peak RSS increase: `ru_maxrss` after the first energy+forces call minus the RSS just before it, each "
                "size in a fresh process (model and graph already built).", ""]

    # (d) batching
    if batch:
        out += ["### Batched prediction", ""]
        loop_ms = float(sorted(batch["loop_ms"])[len(batch["loop_ms"]) // 2])
        batch_ms = float(sorted(batch["batch_ms"])[len(batch["batch_ms"]) // 2])
        loop_cpu = float(sorted(batch["loop_cpu_ms"])[len(batch["loop_cpu_ms"]) // 2])
        batch_cpu = float(sorted(batch["batch_cpu_ms"])[len(batch["batch_cpu_ms"]) // 2])
        n, atoms = batch["structures"], batch["atoms"]
        out += [
            f"{n} small structures ({atoms} atoms in all: Cu and Pd bulk cells, Cu(111)+O slabs, ethanol; 8-13 atoms each), "
            f"shipped-size model, energies and forces, graph construction included. Largest force difference between "
            f"the two ways: {batch['max_force_difference']:.1e} eV/A.",
            "",
            table(
                ["mode", "ms for all", "CPU ms", "structures/s", "atom-steps/s"],
                [
                    ["loop of `predict([s])`", fmt_ms(loop_ms), fmt_ms(loop_cpu), f"{n / loop_ms * 1e3:.1f}", fmt_rate(atoms, loop_ms)],
                    ["`predict(list)`", fmt_ms(batch_ms), fmt_ms(batch_cpu), f"{n / batch_ms * 1e3:.1f}", fmt_rate(atoms, batch_ms)],
                ],
            ),
            "",
            f"Batching gain: {loop_ms / batch_ms:.1f}x (wall), {loop_cpu / batch_cpu:.1f}x (CPU).",
            "",
        ]
    out += goals(info, runners, s_wall, policy_worst)
    out += ["### Setting up the comparison", "", SETUP_NOTES, ""]
    return "\n".join(out)


def goals(info: dict, runners: dict[str, Runner], s_wall: float | None, policy_worst: float | None = None) -> list[str]:
    """The speed goals of the project (issue 15) read off this run: met or not, with the numbers."""
    ours_a, ours_s, ref, mace = runners["ours_a"], runners["ours_s"], runners.get("reference"), runners.get("mace")
    lines = []

    def check(ok: bool | None, text: str) -> None:
        lines.append(f"- {'met' if ok else 'NOT met' if ok is not None else 'not measured'}: {text}")

    r = ref.median("slab37_open") / ours_a.median("slab37_open") if ref and ref.median("slab37_open") and ours_a.median("slab37_open") else None
    check(None if r is None else r >= 3.0, f">= 3x the reference Equiformer on the 37-atom slab: {r:.2f}x" if r else ">= 3x the reference Equiformer")
    for name, label in (("slab37", "slab"), ("bulk500", "500-atom bulk")):
        m = ours_s.median(name) / mace.median(name) if mace and mace.median(name) and ours_s.median(name) else None
        check(None if m is None else m < 1.0, f"faster than MACE-small-size on the {label}: our time / MACE's = {m:.2f}"
              if m else f"faster than MACE-small-size on the {label}")
    n = len([k for k in ("bulk500", "bulk2000", "bulk8000") if k in info])
    check(None if s_wall is None or n < 3 else s_wall <= 1.05,
          f"scaling exponent <= 1.05 over 500-8,000 atoms: {s_wall:.2f}" if s_wall is not None and n == 3
          else "scaling exponent over 500-8,000 atoms (needs all three bulk sizes)")
    check(None if policy_worst is None else policy_worst <= 1.3,
          f"default thread policy within 1.3x of the best fixed setting in both regimes (section 'Thread policy'): "
          f"worst {policy_worst:.2f}x" if policy_worst is not None else "default thread policy within 1.3x of the best "
          "fixed setting (needs the thread-policy table)")
    return ["### Speed goals in this run", ""] + lines + [""]


def update_results(path: Path, body: str) -> None:
    _common.update_section(path, SECTION, body)
    log.info("updated section %r of %s", SECTION, path)


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.quick:
        args.repeats, args.rounds = min(args.repeats, 2), 1
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    env = thread_env(args.threads, args.omp_wait_policy)
    load_before, jobs_before = os.getloadavg(), training_jobs()
    sys.path.insert(0, str(ROOT))

    workdir = Path(tempfile.mkdtemp(prefix="equiformer-speed-"))
    cases_path = workdir / "cases.npz"
    info = write_cases(build_structures(args.quick), cases_path)
    log.info("cases: %s", ", ".join(f"{k} ({v['atoms']} atoms, {v['edges']} edges)" for k, v in info.items()))
    a_cases = [n for n in REFERENCE_CASES if n in info]
    s_cases = [n for n in ["slab37"] + SCALING_CASES if n in info]
    policy_text, policy_worst = None, None
    if not args.no_policy:
        load0 = os.getloadavg()
        policy = run_policy_table(args, info, cases_path, workdir)
        policy_text, policy_worst = policy_report(policy, info, (load0[0], os.getloadavg()[0]), args.repeats, command)
        print(policy_text)
        if args.update_results:
            _common.update_section(args.update_results, POLICY_SECTION, policy_text)
        if args.json:
            args.json.with_suffix(".policy.json").write_text(json.dumps(policy, indent=1))
    if args.policy_only:
        if args.output and policy_text:
            args.output.write_text(policy_text + "\n")
        return 0

    runners: dict[str, Runner] = {
        "ours_a": Runner("ours md17-l2", our_cmd(ROOT, "md17-l2", True), a_cases),
        "ours_s": Runner("ours small", our_cmd(ROOT, "small", False, end_to_end=True), s_cases),
    }
    if args.baseline_src:
        fits = [n for n in info if info[n]["atoms"] <= args.baseline_max_atoms]
        runners["base_a"] = Runner("before md17-l2", our_cmd(args.baseline_src, "md17-l2", True), [n for n in a_cases if n in fits])
        runners["base_s"] = Runner("before small", our_cmd(args.baseline_src, "small", False), [n for n in s_cases if n in fits])
    if args.reference_cmd:
        runners["reference"] = Runner("reference", shlex.split(args.reference_cmd), a_cases)
    if args.mace_cmd:
        runners["mace"] = Runner("mace", shlex.split(args.mace_cmd), [n for n in MACE_CASES if n in info])

    per_round = max(1, math.ceil(args.repeats / args.rounds))
    order = ["ours_a", "base_a", "reference", "ours_s", "base_s", "mace"]
    for r in range(args.rounds):
        log.info("round %d of %d", r + 1, args.rounds)
        for key in order:
            if key in runners:
                runners[key].run(cases_path, workdir, args, per_round, env)

    memory = {}
    if not args.no_memory:
        for name in SCALING_CASES:
            if name in info:
                res = run_worker_once("memory", args, env, workdir, ["--input", str(cases_path), "--only", name, "--preset", "small"])
                if res:
                    memory.update(res["cases"])
    batch = None if args.no_batch else run_worker_once("batch", args, env, workdir, ["--preset", "small"])

    load_after, jobs_after = os.getloadavg(), training_jobs()
    body = report(args, info, runners, memory, batch, command, load_before, load_after, (jobs_before, jobs_after), policy_worst)
    print(body)
    if args.output:
        args.output.write_text(body + "\n")
    if args.json:
        raw = {k: {"label": r.label, "n_params": r.n_params, "error": r.error, "results": r.results} for k, r in runners.items()}
        args.json.write_text(json.dumps({"info": info, "runners": raw, "memory": memory, "batch": batch}, indent=1))
    if args.update_results:
        update_results(args.update_results, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
