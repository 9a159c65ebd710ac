#!/usr/bin/env python
"""How closely the HTTP service reproduces local evaluation (the README's "Reliability" claim).

Starts ``equiformer-calc serve`` with the shipped checkpoint in float32 (model calls in its
worker process, dynamic batching on), evaluates a set of structures (molecules, slabs with
adsorbates, bulk cells, each rattled with a few seeds) once one request at a time and once from
16 concurrent clients (so requests are merged into batched model calls), and compares energies
and forces with a local float32 :class:`EquiformerCalculator` evaluating them one by one.
Reports the largest differences and how many answers are bitwise equal, as a RESULTS.md section.

    python benchmarks/service_agreement.py            # writes "## Service vs local agreement"
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks._common import machine_line, update_section, versions_line  # noqa: E402

SECTION = "## Service vs local agreement"


def structures(n_seeds: int):
    from ase.build import add_adsorbate, bulk, fcc111, molecule

    out = []
    for seed in range(n_seeds):
        for name in ("H2O", "CH4", "CH3CH2OH", "NH3", "CO2", "C6H6", "CH3CHO"):
            a = molecule(name)
            a.rattle(0.05, seed=seed)
            out.append(a)
        for metal, ads in (("Cu", "O"), ("Pt", "CO"), ("Au", "H"), ("Ni", "N")):
            slab = fcc111(metal, (3, 3, 4), vacuum=7.0)
            add_adsorbate(slab, molecule(ads) if len(ads) > 1 else ads, 1.8, "fcc")
            slab.rattle(0.05, seed=seed)
            out.append(slab)
        for metal, a0 in (("Cu", 3.61), ("Pd", 3.89), ("Al", 4.05)):
            b = bulk(metal, "fcc", a=a0, cubic=True).repeat((2, 2, 2))
            b.rattle(0.05, seed=seed)
            out.append(b)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="rattled copies of each structure (default 10)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    from equiformer_calc.calculators.local import EquiformerCalculator
    from equiformer_calc.service import RemoteEquiformerCalculator

    items = structures(args.seeds)
    local = EquiformerCalculator("emt-small", dtype="float32")
    expected = [local.predict([a])[0] for a in items]
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent), "EQUIFORMER_CALC_TOKEN": ""}
    proc = subprocess.Popen([sys.executable, "-m", "equiformer_calc.cli", "serve", "--port", str(port), "--threads", "1",
                             "--no-access-log"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        clients: dict[int, RemoteEquiformerCalculator] = {}

        def remote(k: int):
            import threading

            ident = threading.get_ident()
            clients.setdefault(ident, RemoteEquiformerCalculator(url, timeout=600))
            return clients[ident].predict([items[k]])[0]

        sequential = [remote(k) for k in range(len(items))]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            concurrent_ = list(pool.map(remote, range(len(items))))
    finally:
        proc.terminate()
        proc.wait(60)
    rows = []
    for label, got in (("one request at a time", sequential), ("16 concurrent clients (batched)", concurrent_)):
        de = np.array([abs(g["energy"] - e["energy"]) for g, e in zip(got, expected)])
        dfs = np.array([np.abs(np.asarray(g["forces"]) - e["forces"]).max() for g, e in zip(got, expected)])
        rel = np.array([abs(g["energy"] - e["energy"]) / max(abs(e["energy"]), 1.0) for g, e in zip(got, expected)])
        equal = sum(bool(g["energy"] == e["energy"] and np.array_equal(np.asarray(g["forces"]), e["forces"]))
                    for g, e in zip(got, expected))
        rows.append(f"| {label} | {len(items)} | {de.max():.2g} | {rel.max():.2g} | {dfs.max():.2g} | "
                    f"{equal} / {len(items)} |")
        print(rows[-1], flush=True)
    body = "\n".join([
        SECTION, "", machine_line(), versions_line(["torch", "e3nn", "vesin"]), "",
        f"emt-small in float32; {len(items)} structures (7 molecules, 4 slabs with an adsorbate, 3 bulk cells, "
        f"{args.seeds} rattled copies each); service answers vs a local calculator evaluating one at a time.",
        "",
        "| service calls | structures | max abs dE (eV) | max dE / max(abs E, 1 eV) | max abs dF (eV/A) | bitwise equal (E and F) |",
        "|---|---:|---:|---:|---:|---:|",
        *rows, "",
        "Command: `python benchmarks/service_agreement.py`.",
    ])
    if not args.no_write:
        update_section(HERE / "RESULTS.md", SECTION, body)


if __name__ == "__main__":
    main()
