"""Coordinates far from the origin, huge extents and the compiled neighbour search.

Issue 11, failures 1 and 3: ``Atoms("H2", positions=[[0, 0, 0], [1e6, 0, 0]])`` killed the process
with SIGFPE inside the neighbour search, and float32 edge vectors formed from absolute positions
gave wrong energies (H2O shifted by 1e6 A) or NaN (1e8 A). Now structures are checked against
documented bounds (``MAX_COORDINATE``, ``MAX_EXTENT`` and the search-grid check), the search and
the edge vectors work in a local frame, and edge vectors are formed in float64 before the cast.
Crashing inputs run in a subprocess, so a crash is a test failure, not a dead pytest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from equiformer_calc.graph import (
    MAX_COORDINATE,
    MAX_EXTENT,
    Structure,
    StructureError,
    local_frame,
    neighbor_list,
    search_box,
    structure_from_atoms,
)
from equiformer_calc.predictor import Predictor

from ..helpers import SYSTEMS, make_model

TRANSLATIONS = [1e3, 1e6, 1e8]
DIRECTION = np.array([1.0, -0.7, 0.3])


@pytest.fixture(scope="module")
def predictors() -> dict[str, Predictor]:
    model = make_model(0)
    return {dtype: Predictor(model, dtype=dtype) for dtype in ("float32", "float64")}


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("float64", 1e-7)])
@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_translation_changes_nothing_beyond_round_off(predictors, name, dtype, tol):
    atoms = SYSTEMS[name]()
    props = ["energy", "forces", "energies"] + (["stress"] if atoms.pbc.all() else [])
    predictor = predictors[dtype]
    ref = predictor.predict([atoms], props)[0]
    for t in TRANSLATIONS:
        moved = atoms.copy()
        moved.positions += t * DIRECTION
        got = predictor.predict([moved], props)[0]
        assert abs(got["energy"] - ref["energy"]) <= tol * max(1.0, abs(ref["energy"]) / 100), (t, dtype)
        np.testing.assert_allclose(got["forces"], ref["forces"], atol=tol, rtol=0, err_msg=f"shift {t}")
        np.testing.assert_allclose(got["energies"], ref["energies"], atol=tol, rtol=0)
        if "stress" in props:
            np.testing.assert_allclose(got["stress"], ref["stress"], atol=tol * 1e-2, rtol=0)


def test_local_frame_reconstructs_the_input():
    for make in SYSTEMS.values():
        atoms = make()
        atoms.positions += 3e7 * DIRECTION
        s = structure_from_atoms(atoms)
        frame = local_frame(s)
        back = frame.origin + frame.positions + frame.images @ s.cell
        np.testing.assert_allclose(back, s.positions, atol=1e-7, rtol=0)
        assert np.abs(frame.positions).max() < 50.0  # small numbers: near the origin, in the cell
        if s.pbc.any():
            frac = np.linalg.solve(frame.basis.T, frame.positions.T).T[:, s.pbc]
            assert frac.min() > -1e-9 and frac.max() < 1 + 1e-9


def test_coordinate_and_extent_bounds_are_clear_errors():
    with pytest.raises(StructureError, match="exceed 1e\\+09 A"):
        Structure.from_arrays([1, 1], [[0, 0, 0], [2 * MAX_COORDINATE, 0, 0]])
    with pytest.raises(StructureError, match="cell vector 2 is 2e\\+05 A long"):
        Structure.from_arrays([29], [[0, 0, 0]], cell=[3.0, 3.0, 2 * MAX_EXTENT], pbc=True)
    with pytest.raises(StructureError, match="span 1e\\+06 A along x"):
        neighbor_list(Structure.from_arrays([1, 1], [[0, 0, 0], [1e6, 0, 0]]), 5.0)
    # within the bounds, a sparse structure is fine (and has no edges)
    i, _, _ = neighbor_list(Structure.from_arrays([1, 1], [[0, 0, 0], [0.5 * MAX_EXTENT, 0, 0]]), 5.0)
    assert i.size == 0


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_issue_inputs_that_crashed_the_process_are_clear_errors():
    """The SIGFPE reproductions of the issue, each in a fresh process (rc 136 was the old result)."""
    code = """
        import numpy as np
        from ase import Atoms
        from ase.build import fcc111
        from equiformer_calc import EquiformerCalculator, StructureError
        from tests.helpers import make_model
        calc = EquiformerCalculator(model=make_model(0))
        h2 = Atoms("H2", positions=[[0, 0, 0], [1e6, 0, 0]])
        slab = fcc111("Cu", (2, 2, 3), vacuum=6.0)
        slab.positions[0, 2] += 1e6
        wide = Atoms("Cu2", positions=[[0, 0, 0], [1.5, 1.5, 0]], cell=[4000.0, 4000.0, 0.0], pbc=[True, True, False])
        for name, atoms in [("h2", h2), ("slab", slab), ("wide", wide)]:
            try:
                atoms.calc = calc
                atoms.get_potential_energy()
                print(name, "evaluated")
            except StructureError as exc:
                print(name, "StructureError:", exc)
    """
    proc = _run(code)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert lines["h2"].startswith("StructureError: structure 0: the atoms span 1e+06 A"), lines
    assert lines["slab"].startswith(
        "StructureError: structure 0: the atoms span 1e+06 A along non-periodic axis 2"), lines
    assert lines["wide"].startswith("StructureError: structure 0: the structure is too wide and flat"), lines


SHAPES = {
    # kind: numbers, positions, cell, pbc as a function of the size L (Angstrom)
    "needle": lambda L: ([1, 1], [[0, 0, 0], [L, 0, 0]], None, False),
    "flat": lambda L: ([1, 1, 1, 1], [[0, 0, 0], [L, 0, 0], [0, L, 0], [L, L, 0]], None, False),
    "flat_pbc": lambda L: ([1, 1], [[0, 0, 0], [1, 0, 0]], [L, L, 0.0], [True, True, False]),
    "cube": lambda L: ([1, 1], [[0, 0, 0], [L, L, L]], None, False),
}


def test_search_grid_check_refuses_exactly_what_the_compiled_search_cannot_do():
    """Each shape is handed to vesin directly in a subprocess: whatever our check lets through must
    run, and what it refuses must be what would have crashed (or be over the extent bound)."""
    # either side of the flat shapes' limit (~1600 A with a 5 A cutoff), and long thin/cubic ones
    cases = [("flat", 1000.0), ("flat", 2000.0), ("flat_pbc", 1000.0), ("flat_pbc", 2000.0),
             ("needle", 5e4), ("cube", 5e4)]
    accepted = {}
    for kind, L in cases:
        numbers, positions, cell, pbc = SHAPES[kind](L)
        s = Structure.from_arrays(numbers, positions, cell, pbc)
        try:
            neighbor_list(s, 5.0)
            accepted[(kind, L)] = True
        except StructureError:
            accepted[(kind, L)] = False
    # the child imports only numpy and vesin (fast); it gets the arrays vesin would get from us
    code = """
        import json, sys, numpy as np, vesin
        positions, box, pbc = json.loads(sys.argv[1])
        vesin.NeighborList(cutoff=5.0, full_list=True).compute(np.array(positions, float), np.array(box, float), pbc, "ij")
        print("ok")
    """
    for (kind, L), ok in accepted.items():
        s = Structure.from_arrays(*SHAPES[kind](L))
        frame = local_frame(s)
        box = search_box(frame, s.cell, s.pbc, 5.0)
        arg = json.dumps([frame.positions.tolist(), box.tolist(), s.pbc.tolist()])
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), arg], capture_output=True, text=True,
                              timeout=120)
        survived = proc.returncode == 0 and proc.stdout.strip() == "ok"
        assert survived == ok, (kind, L, proc.returncode, ok)
    assert accepted[("needle", 5e4)] and accepted[("cube", 5e4)] and not accepted[("flat", 2000.0)]
