"""The shared symmetry check catches what it should (a check that cannot fail proves nothing)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.emt import EMT

from .equivariance import assert_equivariant
from .helpers import bulk_cell, slab_with_adsorbate


def emt(atoms):
    atoms = atoms.copy()
    atoms.calc = EMT()
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if atoms.pbc.all():
        out["stress"] = atoms.get_stress()
    return out


def test_a_symmetric_potential_passes():
    assert_equivariant(emt, bulk_cell(), rtol=1e-9)
    assert_equivariant(emt, slab_with_adsorbate(), rtol=1e-9)


@pytest.mark.parametrize("broken, case", [
    (lambda out, atoms: {**out, "energy": out["energy"] + atoms.positions[:, 0].sum()}, "rotation: energy"),
    (lambda out, atoms: {**out, "forces": out["forces"] * (1 + np.arange(len(atoms)))[:, None]}, "permutation: forces"),
    (lambda out, atoms: {**out, "stress": np.abs(out["stress"])}, "stress"),
])
def test_a_broken_symmetry_is_caught(broken, case):
    with pytest.raises(AssertionError, match=case):
        assert_equivariant(lambda atoms: broken(emt(atoms), atoms), bulk_cell(), rtol=1e-9)
