"""Free energies (ideal gas, harmonic) and CHE schemes: limiting potentials by hand, scheme data
validation, and the screening hook end to end."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import add_adsorbate, fcc111, molecule
from ase.units import kB

from equiformer_calc import EquiformerCalculator, relax
from equiformer_calc.workflows import thermo

G = {"OH": 0.8, "O": 1.6, "OOH": 4.0, "H": -0.2, "CO": -0.5, "COOH": 0.3}


def test_package_schemes_and_limiting_potentials():
    schemes = thermo.load_schemes()
    assert {"ORR", "OER", "HER", "CO2RR"} <= set(schemes)
    orr = thermo.che_analysis("s", G, schemes["ORR"])
    # steps: OOH - 4.92, O - OOH, OH - O, -OH
    np.testing.assert_allclose(orr.steps, [4.0 - 4.92, 1.6 - 4.0, 0.8 - 1.6, -0.8])
    assert orr.limiting_potential == pytest.approx(0.8)
    assert orr.overpotential == pytest.approx(1.23 - 0.8)
    oer = thermo.che_analysis("s", G, schemes["OER"])
    assert oer.limiting_potential == pytest.approx(2.4) and oer.limiting_step == 3
    assert oer.overpotential == pytest.approx(2.4 - 1.23)
    # at U_L every electrochemical step is downhill, and the limiting one is flat
    g_at = oer.free_energies_at(oer.limiting_potential)
    assert np.diff(g_at).max() == pytest.approx(0.0, abs=1e-12)
    her = thermo.che_analysis("s", G, schemes["HER"])
    assert her.limiting_potential == pytest.approx(-0.2) and her.limiting_step == 2
    co2 = thermo.che_analysis("s", G, schemes["CO2RR"])
    # CO2 formation free energy -0.21 eV (data): CO2 -> COOH* costs 0.3 + 0.21
    assert co2.steps[0] == pytest.approx(0.51) and co2.limiting_potential == pytest.approx(-0.51)
    assert co2.electrochemical == [True, True, False]
    assert any("chemical step 3" in n for n in co2.notes)  # CO* -> CO(g) uphill by 0.5 eV


def test_scaling_relation_fills_ooh():
    orr = thermo.che_analysis("s", {"OH": 0.8, "O": 1.6}, thermo.load_schemes()["ORR"])
    assert orr.steps[0] == pytest.approx(0.8 + 3.2 - 4.92)
    assert any("scaling" in n for n in orr.notes)
    with pytest.raises(KeyError, match="OOH"):
        thermo.che_analysis("s", {"OH": 0.8, "O": 1.6}, thermo.load_schemes()["ORR"], scaling=False)


def test_user_scheme_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("schemes:\n  NRR1:\n    direction: reduction\n    equilibrium_potential: 0.0\n    descriptor: NH\n"
                    "    states:\n      - {N2: 1, 'H+e-': 1}\n      - {'N*': 1, 'NH*': 1}\n")
    schemes = thermo.load_schemes(path)
    assert "NRR1" in schemes and "ORR" in schemes
    r = thermo.che_analysis("s", {"N": 0.5, "NH": 0.2}, schemes["NRR1"])
    assert r.limiting_potential == pytest.approx(-0.7)


@pytest.mark.parametrize("states, match", [
    ("[{O2: 1, 'H+e-': 4}, {'OOH*': 1, 'H+e-': 2}]", "same elements"),
    ("[{O2: 1, 'H+e-': 4}, {'OOH*': 1, 'H+e-': 2, 'H': 1}]", "moves 2"),
    ("[{'H*': 1}, {'H+e-': 1}]", "against"),
    ("[{'CO*': 1}, {CO: 1}]", "no step moves"),
])
def test_bad_scheme(tmp_path, states, match):
    path = tmp_path / "bad.yaml"
    path.write_text(f"schemes:\n  X:\n    direction: reduction\n    equilibrium_potential: 0\n    descriptor: O\n"
                    f"    states: {states}\n")
    with pytest.raises(ValueError, match=match):
        thermo.load_schemes(path)


@pytest.fixture(scope="module")
def shipped():
    return EquiformerCalculator(dtype="float64")


def test_ideal_gas_h2(shipped):
    """G - E - ZPE of H2 at 298.15 K and 1 bar is (7/2) kT - T S_trans+rot: -0.314 eV from its
    standard entropy (130.7 J/mol/K), whatever the model (the vibration adds < 1e-6 eV)."""
    h2 = relax(molecule("H2"), calculator=shipped, fmax=0.001, steps=100).atoms
    g = thermo.gas_free_energies({"H2": h2}, shipped, 298.15, 1e5, progress=False)["H2"]
    assert g.geometry == "linear" and g.symmetry == 2 and g.spin == 0
    assert g.correction - g.zpe == pytest.approx(3.5 * kB * 298.15 - 298.15 * 130.68 / 96485.33, abs=0.01)
    g2 = thermo.gas_free_energies({"H2": h2}, shipped, 298.15, 1e3, progress=False)["H2"]
    assert g2.correction - g.correction == pytest.approx(kB * 298.15 * np.log(1e3 / 1e5), abs=1e-9)
    with pytest.raises(ValueError, match="no ideal-gas data"):
        thermo.gas_free_energies({"C6H6": molecule("C6H6")}, shipped, progress=False)
    with pytest.raises(ValueError, match="temperature"):
        thermo.gas_free_energies({"H2": h2}, shipped, -5.0, progress=False)


def test_harmonic_adsorbate(shipped):
    slab = fcc111("Cu", (2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "H", 1.0, "fcc")
    from ase.constraints import FixAtoms

    slab.set_constraint(FixAtoms(indices=list(range(12))))
    slab = relax(slab, calculator=shipped, fmax=0.005, steps=200).atoms
    cold, hot = (thermo.adsorbate_free_energies([slab], shipped, t, progress=False)[0] for t in (100.0, 600.0))
    vib = cold.vibrations
    assert vib is not None and vib.indices == [12]
    assert cold.zpe == pytest.approx(0.5 * vib.real_energies.sum())
    assert cold.n_imaginary == 0
    # entropy grows with temperature: G - E falls
    assert hot.ts > cold.ts > 0 and hot.correction < cold.correction


@pytest.mark.slow
def test_screen_free_energies(shipped, tmp_path):
    from equiformer_calc.workflows.screening import screen_adsorbates

    calc = EquiformerCalculator()  # float32, as a screen runs
    res = screen_adsorbates({"Cu-111": ("Cu", "111")}, ["H", "OH"], db=tmp_path / "s.db", calculator=calc,
                            steps=40, site_kinds=["fcc"], progress=False)
    rows = thermo.screen_free_energies(res.summary, res.db, calc, progress=False)
    for r in rows:
        assert set(thermo.FREE_ENERGY_COLUMNS) <= set(r)
        assert np.isfinite(r["g_ads"]) and r["zpe"] > 0.1  # an H stretch alone is > 0.1 eV
    # g_ads - e_ads = (G - E)_ads - sum of the element references' corrections
    h, oh = (next(r for r in rows if r["adsorbate"] == a) for a in ("H", "OH"))
    mu_h = h["g_corr"] - (h["g_ads"] - h["e_ads_min"])
    mu_o = oh["g_corr"] - (oh["g_ads"] - oh["e_ads_min"]) - mu_h
    # mu_H = (G - E)(H2) / 2 ~ (ZPE 0.27 - 0.31) / 2 ~ -0.02; mu_O = (G - E)(H2O) - (G - E)(H2) ~ 0.0-0.2
    assert -0.1 < mu_h < 0.05 and -0.1 < mu_o < 0.3
    with pytest.raises(ValueError, match="screened with"):
        thermo.screen_free_energies(res.summary, res.db, shipped, progress=False)  # float64: another model


def test_electrocatalysis_adsorbates():
    """OOH and COOH are named adsorbates for screening, outside the data-generation domain."""
    from equiformer_calc.surfaces import ADSORBATES, adsorbate_template

    assert "OOH" not in ADSORBATES and "COOH" not in ADSORBATES
    _, ooh = adsorbate_template("OOH")
    assert ooh.get_chemical_symbols() == ["O", "O", "H"]
    assert ooh.get_distance(0, 1) == pytest.approx(1.45, abs=0.01) and ooh.get_distance(1, 2) == pytest.approx(0.98, abs=0.01)
    _, cooh = adsorbate_template("COOH")
    assert cooh.get_chemical_symbols() == ["C", "O", "O", "H"]
    assert cooh.get_distance(0, 1) == pytest.approx(1.22, abs=0.01) and cooh.get_distance(2, 3) == pytest.approx(0.97, abs=0.01)
    assert (cooh.positions[1:, 2] > 0).all()  # bound through C, the rest pointing up


def test_volcano_line():
    """With O* and OOH* on exact scaling lines, the ORR volcano is the textbook one: U_L = min(dG_OH,
    dG_O - dG_OH, ...) with its top where two steps cross."""
    scheme = thermo.load_schemes()["ORR"]
    results = [thermo.che_analysis(str(x), {"OH": x, "O": 2 * x, "OOH": x + 3.2}, scheme) for x in (0.2, 0.8, 1.4)]
    grid, u = thermo.volcano_line(results)
    expected = np.minimum.reduce([4.92 - (grid + 3.2), 3.2 - grid, grid, grid])
    np.testing.assert_allclose(u, expected, atol=1e-9)
    assert thermo.volcano_line(results[:1]) is None
