"""What the surface chemistry works with: fcc metals and their lattice constants, adsorbates with
their binding atoms, gas-phase molecules and the OC20 element references built from them.

* Metals: :data:`METALS` (the EMT domain), :data:`TEACHER_METALS` (adds Rh and Ir);
  :data:`EMT_LATTICE_CONSTANTS` (the EMT energy minima) and :func:`lattice_constant` (that, or ASE's
  experimental value for an fcc metal EMT lacks). A labeller's own lattice constants are fitted where
  the data are made (:func:`equiformer_calc.data.label.fit_lattice_constants`).
* Adsorbates: :data:`ADSORBATES`, templates with the binding atom first at the origin and the rest of
  the molecule pointing up (+z); :func:`adsorbate_template` also takes any ``ase.Atoms``.
* Gas: :data:`GAS_MOLECULES` (the teacher dataset's molecules), :data:`REFERENCE_MOLECULES` and
  :func:`reference_potentials` (OC20's element references mu_H, mu_O, mu_C, mu_N).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from ase import Atoms
from ase.build import molecule
from ase.data import atomic_numbers, reference_states

__all__ = [
    "METALS", "TEACHER_METALS", "EMT_LATTICE_CONSTANTS", "ADSORBATES", "EXTRA_ADSORBATES", "GAS_MOLECULES", "REFERENCE_MOLECULES",
    "REFERENCE_SCHEME", "ase_lattice_constant", "lattice_constant", "build_adsorbate", "adsorbate_template",
    "gas_molecule", "reference_potentials", "gas_reference_energy",
]

#: The EMT metals (the default domain of data generation).
METALS: tuple[str, ...] = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al")
#: The teacher domain: every fcc metal of the distilled model.
TEACHER_METALS: tuple[str, ...] = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Rh", "Ir", "Al")

#: fcc lattice constants (Å) that minimise the EMT energy of each bulk metal (fitted with
#: ``ase.calculators.emt.EMT``; ASE's experimental defaults are up to 1.5 % off for EMT).
EMT_LATTICE_CONSTANTS: dict[str, float] = {
    "Cu": 3.5898,
    "Ag": 4.0636,
    "Au": 4.0562,
    "Ni": 3.4871,
    "Pd": 3.8787,
    "Pt": 3.9218,
    "Al": 3.9943,
}

#: Adsorbate templates: symbols and positions (Å) with the binding atom (index 0) at the origin
#: and the rest of the molecule pointing up (+z, away from the surface).
ADSORBATES: dict[str, tuple[tuple[str, ...], tuple[tuple[float, float, float], ...]]] = {
    "H": (("H",), ((0.0, 0.0, 0.0),)),
    "O": (("O",), ((0.0, 0.0, 0.0),)),
    "N": (("N",), ((0.0, 0.0, 0.0),)),
    "C": (("C",), ((0.0, 0.0, 0.0),)),
    "OH": (("O", "H"), ((0.0, 0.0, 0.0), (0.0, 0.0, 0.97))),
    "CO": (("C", "O"), ((0.0, 0.0, 0.0), (0.0, 0.0, 1.15))),
    "NO": (("N", "O"), ((0.0, 0.0, 0.0), (0.0, 0.0, 1.17))),
    "CH": (("C", "H"), ((0.0, 0.0, 0.0), (0.0, 0.0, 1.09))),
    "CH2": (("C", "H", "H"), ((0.0, 0.0, 0.0), (0.89, 0.0, 0.63), (-0.89, 0.0, 0.63))),
    "CH3": (
        ("C", "H", "H", "H"),
        ((0.0, 0.0, 0.0), (1.028, 0.0, 0.363), (-0.514, 0.890, 0.363), (-0.514, -0.890, 0.363)),
    ),
    "NH": (("N", "H"), ((0.0, 0.0, 0.0), (0.0, 0.0, 1.02))),
    "NH2": (("N", "H", "H"), ((0.0, 0.0, 0.0), (0.82, 0.0, 0.59), (-0.82, 0.0, 0.59))),
    "H2O": (("O", "H", "H"), ((0.0, 0.0, 0.0), (0.76, 0.0, 0.59), (-0.76, 0.0, 0.59))),
}

#: Electrocatalysis intermediates (ORR/OER: OOH*; CO2 reduction: carbon-bound COOH*), templates of the same
#: form; named adsorbates for screening, kept out of :data:`ADSORBATES` (the data-generation domain).
EXTRA_ADSORBATES: dict[str, tuple[tuple[str, ...], tuple[tuple[float, float, float], ...]]] = {
    "OOH": (("O", "O", "H"), ((0.0, 0.0, 0.0), (0.0, 0.0, 1.45), (0.93, 0.0, 1.75))),
    "COOH": (("C", "O", "O", "H"), ((0.0, 0.0, 0.0), (-1.0, 0.0, 0.70), (1.10, 0.0, 0.80), (1.95, 0.0, 1.27))),
}

#: Gas-phase molecules (ASE's g2 names) of the teacher dataset: adsorption energies need them.
GAS_MOLECULES: tuple[str, ...] = ("H2", "H2O", "CO", "N2", "CO2", "NH3", "CH4", "O2", "NO", "CH3OH")
#: The gas-phase molecules of OC20's element references (see :func:`reference_potentials`).
REFERENCE_MOLECULES: tuple[str, ...] = ("H2", "H2O", "CO", "N2")
REFERENCE_SCHEME = "OC20: mu_H=E(H2)/2, mu_O=E(H2O)-E(H2), mu_C=E(CO)-mu_O, mu_N=E(N2)/2"


def ase_lattice_constant(metal: str) -> float:
    """ASE's default (experimental) fcc lattice constant, the one ``fcc111(metal, ...)`` uses."""
    return float(reference_states[atomic_numbers[metal]]["a"])


def lattice_constant(metal: str) -> float:
    """The fcc lattice constant (Å) slabs of ``metal`` are built with: the EMT minimum of
    :data:`EMT_LATTICE_CONSTANTS`, else ASE's reference value. Raises ``ValueError`` for an unknown
    symbol or a metal whose reference structure is not fcc."""
    if metal in EMT_LATTICE_CONSTANTS:
        return EMT_LATTICE_CONSTANTS[metal]
    if metal not in atomic_numbers:
        raise ValueError(f"unknown metal {metal!r}: give a chemical symbol such as Cu or Pt")
    state = reference_states[atomic_numbers[metal]] or {}
    if state.get("symmetry") != "fcc":
        raise ValueError(f"{metal} is not an fcc metal (its reference structure is "
                         f"{state.get('symmetry', 'unknown')}); this builder makes fcc surfaces")
    return ase_lattice_constant(metal)


def build_adsorbate(name: str) -> Atoms:
    """The adsorbate template of :data:`ADSORBATES` or :data:`EXTRA_ADSORBATES`: binding atom (index 0) at the origin, molecule along +z."""
    symbols, positions = ADSORBATES[name] if name in ADSORBATES else EXTRA_ADSORBATES[name]
    return Atoms(symbols=list(symbols), positions=np.array(positions, dtype=float))


def adsorbate_template(adsorbate: str | Atoms) -> tuple[str, Atoms]:
    """(name, template with the binding atom first at the origin, molecule pointing up) of a name of
    :data:`ADSORBATES` or of an ``ase.Atoms`` (its first atom binds; named by ``info['name']`` or its
    formula; its cell, pbc and constraints are dropped)."""
    if isinstance(adsorbate, Atoms):
        template = adsorbate.copy()
        template.set_constraint()
        template.pbc = False
        template.cell = np.zeros((3, 3))
        template.translate(-template.positions[0])
        name = str(template.info.get("name") or template.get_chemical_formula(mode="hill"))
        return name, template
    if adsorbate not in ADSORBATES and adsorbate not in EXTRA_ADSORBATES:
        raise ValueError(f"unknown adsorbate {adsorbate!r}; named ones: {', '.join([*ADSORBATES, *EXTRA_ADSORBATES])} "
                         "(or pass ase.Atoms)")
    return str(adsorbate), build_adsorbate(adsorbate)


def gas_molecule(name: str, vacuum: float | None = None) -> Atoms:
    """A gas-phase molecule (ASE's g2 geometry), non-periodic: with no cell, or centred in a box with
    ``vacuum`` Å around it (the box only sets the cell)."""
    atoms = molecule(name)
    if vacuum is not None:
        atoms.center(vacuum=vacuum)
    else:
        atoms.cell = np.zeros((3, 3))
    atoms.pbc = False
    return atoms


def reference_potentials(gas_energies: Mapping[str, float]) -> dict[str, float]:
    """Element chemical potentials mu_H, mu_O, mu_C, mu_N from the gas-phase energies of H2, H2O,
    CO and N2 (OC20's scheme, :data:`REFERENCE_SCHEME`)."""
    e = gas_energies
    mu = {"H": 0.5 * e["H2"], "O": e["H2O"] - e["H2"]}
    mu["C"] = e["CO"] - mu["O"]
    mu["N"] = 0.5 * e["N2"]
    return mu


def gas_reference_energy(symbols: Iterable[str], mu: Mapping[str, float]) -> float:
    """``sum_X n_X mu_X`` over an adsorbate's element ``symbols``: what a gas-referenced adsorption
    energy ``E(slab+ads) - E(slab) - sum_X n_X mu_X`` subtracts."""
    return float(sum(mu[s] for s in symbols))
