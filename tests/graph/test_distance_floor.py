"""The element-aware distance floor (``graph.neighbors.distance_floor``): overlaps below
``min_distance_ratio`` x the sum of covalent radii are refused with a message naming the atoms, pairs
within twice the floor are logged, normal bonds are silent, and ``min_distance_ratio=0`` keeps only
the 0.1 A overlap check."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from ase import Atoms
from ase.data import covalent_radii

from equiformer_calc.calculators.local import EquiformerCalculator
from equiformer_calc.graph import MIN_DISTANCE, StructureError, distance_floor
from equiformer_calc.predictor import Predictor

from ..helpers import make_model


def dimer(symbol: str, r: float) -> Atoms:
    return Atoms(symbol + "2", positions=[[0.0, 0.0, 0.0], [r, 0.0, 0.0]])


@pytest.fixture(scope="module")
def model():
    return make_model(0)


def test_floor_is_a_fraction_of_the_covalent_radii_sum_never_below_the_overlap_check():
    h, cu = np.array([1]), np.array([29])
    # ASE's covalent radii: H 0.31 A, Cu 1.32 A
    assert distance_floor(h, h, 0.25)[0] == pytest.approx(0.155)
    assert distance_floor(cu, cu, 0.25)[0] == pytest.approx(0.66)
    assert distance_floor(h, cu, 0.5)[0] == pytest.approx(0.815)
    assert distance_floor(h, h, 0.1)[0] == MIN_DISTANCE  # 0.062 A would be below the overlap check


def test_distance_floor_refuses_overlaps_and_warns_above(model, caplog):
    calc = EquiformerCalculator(model=model)  # default floor: 0.25 x covalent-radii sum
    floor = 0.25 * 2 * covalent_radii[29]  # 0.66 A for Cu-Cu
    with pytest.raises(StructureError, match=r"atoms 0 \(Cu\) and 1 \(Cu\) overlap.*floor of 0.66 A"):
        calc.get_potential_energy(dimer("Cu", 0.95 * floor))
    with caplog.at_level(logging.WARNING, logger="equiformer_calc.graph"):
        calc.get_potential_energy(dimer("Cu", 1.5 * floor))
    assert any("very close" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="equiformer_calc.graph"):
        calc.get_potential_energy(dimer("Cu", 2.3))  # a normal Cu-Cu bond: silent
        calc.get_potential_energy(dimer("H", 0.74))  # H2 at its bond length: silent
    assert not caplog.records
    # the floor is element-aware: H-H at 0.3 A is above its own floor (0.155 A) but Cu-Cu is not
    assert np.isfinite(calc.get_potential_energy(dimer("H", 0.3)))
    # lowering it evaluates deliberate compressions (scans); the 0.1 A overlap check stays
    low = EquiformerCalculator(model=model, min_distance_ratio=0.0)
    assert low.get_potential_energy(dimer("Cu", 0.2)) > 1e3
    with pytest.raises(StructureError, match="overlap"):
        low.get_potential_energy(dimer("Cu", 0.05))
    with pytest.raises(ValueError, match="min_distance_ratio"):
        Predictor(model, min_distance_ratio=-1)
