"""Bulk properties (``equiformer_calc.workflows.bulk``) checked against independent routes, with EMT.

* the EOS bulk modulus equals (C11 + 2 C12) / 3 from the stress-strain elastic constants;
* acoustic frequencies vanish at Gamma, the transverse branches are degenerate at X;
* X-point frequencies equal those of ASE's own finite-displacement ``Phonons``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from equiformer_calc.workflows.bulk import cubic_elastic_constants, equation_of_state, phonon_frequencies


def test_bulk_modulus_from_eos_matches_elastic_constants() -> None:
    eos = equation_of_state(EMT(), "Cu", 3.61)
    assert eos["a0"] == pytest.approx(3.5898, abs=2e-3)  # EMT's minimum (datagen's table)
    c = cubic_elastic_constants(EMT(), "Cu", eos["a0"])
    assert eos["bulk_modulus_GPa"] == pytest.approx((c["C11_GPa"] + 2 * c["C12_GPa"]) / 3, rel=0.02)
    assert c["C11_GPa"] > c["C12_GPa"] > 0 and c["C44_GPa"] > 0


def test_phonons_against_ase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ase.phonons import Phonons

    a0 = 3.5898
    ours = phonon_frequencies(EMT(), "Cu", a0, {"G": (0, 0, 0), "X": (1, 0, 0)}, supercell=4)
    assert max(abs(f) for f in ours["G"]) < 0.05
    x = ours["X"]
    assert x[0] == pytest.approx(x[1], rel=1e-6) and x[2] > x[1] > 1.0
    monkeypatch.chdir(tmp_path)
    ph = Phonons(bulk("Cu", "fcc", a=a0), EMT(), supercell=(4, 4, 4), delta=0.01, name="ph")
    ph.run()
    ph.read(acoustic=True)
    energies = ph.band_structure([np.array([0.5, 0.0, 0.5])])  # X in the primitive reciprocal basis
    ase_thz = np.sort(energies[0]) / (4.135667696e-3)  # eV -> THz
    np.testing.assert_allclose(x, ase_thz, rtol=0.01)
