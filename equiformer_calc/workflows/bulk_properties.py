"""Bulk properties through other projects' code: equation of state (ASE), cubic elastic constants
from strain-stress fits, and phonons with phonopy (``pip install 'equiformer-calc[phonons]'``).

Every function takes any ASE calculator, so the same call gives the model's and a reference's
numbers (``examples/phonons.py`` and ``examples/elastic_constants.py`` put EMT beside the shipped
model).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.units import GPa

__all__ = [
    "equation_of_state", "cubic_elastic_constants", "phonopy_force_constants", "frequencies_at", "FCC_PATH",
    "FCC_QPOINTS", "fcc_properties", "relative_deviation",
]

log = logging.getLogger(__name__)

#: a band path of the fcc Brillouin zone in the primitive cell's reciprocal basis (ASE's ``bulk``
#: primitive cell): Gamma - X - K | U - Gamma - L
FCC_PATH: list[list[tuple[str, Sequence[float]]]] = [
    [("$\\Gamma$", (0.0, 0.0, 0.0)), ("X", (0.5, 0.0, 0.5)), ("K", (0.375, 0.375, 0.75))],
    [("U", (0.625, 0.25, 0.625)), ("$\\Gamma$", (0.0, 0.0, 0.0)), ("L", (0.5, 0.5, 0.5))],
]


def equation_of_state(calculator: Calculator, atoms: Atoms, strain: float = 0.01, points: int = 9) -> dict[str, float]:
    """Birch-Murnaghan fit of E(V) over lattice scalings ``1 +- strain`` (``points`` cells): the
    equilibrium volume ``v0`` (A^3 per cell), energy ``e0`` (eV) and bulk modulus ``B_GPa``."""
    from ase.eos import EquationOfState

    if not atoms.pbc.all():
        raise ValueError("an equation of state needs a structure periodic in all three directions")
    volumes, energies = [], []
    for s in np.linspace(1 - strain, 1 + strain, points):
        a = atoms.copy()
        a.set_cell(atoms.cell.array * s, scale_atoms=True)
        a.calc = calculator
        volumes.append(a.get_volume())
        energies.append(a.get_potential_energy())
    v0, e0, b = EquationOfState(volumes, energies, eos="birchmurnaghan").fit()
    return {"v0": float(v0), "e0": float(e0), "B_GPa": float(b / GPa)}


def cubic_elastic_constants(calculator: Calculator, atoms: Atoms, strain: float = 1e-3) -> dict[str, float]:
    """C11, C12, C44 and B = (C11 + 2 C12) / 3 in GPa of a cubic crystal whose atoms are all at
    inversion centres (fcc, bcc: no internal relaxation), from central differences of the stress
    under a normal strain e_xx and a shear e_yz of ``+-strain``."""
    if not atoms.pbc.all():
        raise ValueError("elastic constants need a structure periodic in all three directions")

    def stress(eps: np.ndarray) -> np.ndarray:
        a = atoms.copy()
        a.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
        a.calc = calculator
        return a.get_stress(voigt=False)

    normal = np.zeros((3, 3))
    normal[0, 0] = strain
    shear = np.zeros((3, 3))
    shear[1, 2] = shear[2, 1] = strain
    d_normal = (stress(normal) - stress(-normal)) / (2 * strain)
    d_shear = (stress(shear) - stress(-shear)) / (2 * strain)
    c11, c12 = d_normal[0, 0], 0.5 * (d_normal[1, 1] + d_normal[2, 2])
    c44 = d_shear[1, 2] / 2  # sigma_yz = C44 * gamma_yz, gamma_yz = 2 e_yz
    out = {"C11": c11 / GPa, "C12": c12 / GPa, "C44": c44 / GPa}
    out["B"] = (out["C11"] + 2 * out["C12"]) / 3
    return {k: float(v) for k, v in out.items()}


def phonopy_force_constants(
    calculator: Calculator, primitive: Atoms, supercell: int = 4, displacement: float = 0.01
) -> Any:
    """A ``phonopy.Phonopy`` of ``primitive`` with force constants from ``calculator`` (finite
    displacements of ``displacement`` A in a supercell of ``supercell`` x ``supercell`` x ``supercell`` cells); ask it for frequencies
    (THz), band structures and DOS with phonopy's own API."""
    try:
        from phonopy import Phonopy
        from phonopy.structure.atoms import PhonopyAtoms
    except ImportError as exc:
        raise ImportError("phonons need phonopy: pip install 'equiformer-calc[phonons]'") from exc

    unit = PhonopyAtoms(symbols=primitive.get_chemical_symbols(), cell=primitive.cell.array,
                        scaled_positions=primitive.get_scaled_positions())
    phonon = Phonopy(unit, supercell_matrix=np.eye(3, dtype=int) * int(supercell))
    phonon.generate_displacements(distance=displacement)
    forces = []
    for cell in phonon.supercells_with_displacements:
        a = Atoms(cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions, pbc=True)
        a.calc = calculator
        forces.append(a.get_forces())
    phonon.forces = forces
    phonon.produce_force_constants()
    log.debug("phonopy: %d displaced supercells of %d atoms", len(forces), len(phonon.supercell))
    return phonon


def frequencies_at(phonon: Any, qpoints: Sequence[Sequence[float]]) -> np.ndarray:
    """Frequencies (THz), one row per q-point (reduced coordinates of the primitive cell)."""
    phonon.run_qpoints(np.asarray(qpoints, dtype=float))
    result = getattr(phonon, "qpoints", None)
    if hasattr(result, "frequencies"):
        return np.asarray(result.frequencies)
    return np.asarray(phonon.get_qpoints_dict()["frequencies"])  # phonopy before the Qpoints result object



#: high-symmetry points of the fcc zone used for model-vs-reference comparisons (primitive reciprocal basis)
FCC_QPOINTS: dict[str, tuple[float, float, float]] = {"X": (0.5, 0.0, 0.5), "L": (0.5, 0.5, 0.5)}


def fcc_properties(calculator: Calculator, symbol: str, a_guess: float | None = None) -> dict[str, Any]:
    """Lattice constant, bulk modulus, C11/C12/C44 and X/L phonon frequencies of fcc ``symbol``.

    The EOS is fitted twice (the second time around the first fit's lattice constant), the elastic
    constants and phonons are taken at the fitted lattice constant. Phonons need phonopy.
    """
    from ase.build import bulk
    from ase.data import atomic_numbers, reference_states

    a0 = float(a_guess or reference_states[atomic_numbers[symbol]]["a"])
    for _ in range(2):
        eos = equation_of_state(calculator, bulk(symbol, "fcc", a=a0), strain=0.015)
        a0 = float((4.0 * eos["v0"]) ** (1.0 / 3.0))
    elastic = cubic_elastic_constants(calculator, bulk(symbol, "fcc", a=a0, cubic=True))
    phonon = phonopy_force_constants(calculator, bulk(symbol, "fcc", a=a0))
    freqs = frequencies_at(phonon, list(FCC_QPOINTS.values()))
    return {
        "a0": a0, "B_GPa": eos["B_GPa"], "C11": elastic["C11"], "C12": elastic["C12"], "C44": elastic["C44"],
        "phonons_THz": {name: sorted(float(f) for f in row) for name, row in zip(FCC_QPOINTS, freqs)},
    }


def relative_deviation(model: dict[str, Any], reference: dict[str, Any], keys: Sequence[str]) -> dict[str, float]:
    """``(model - reference) / reference`` for scalar ``keys`` and the highest X / L phonon frequency."""
    dev = {k: (model[k] - reference[k]) / reference[k] for k in keys}
    for q in model.get("phonons_THz", {}):
        ref_max = max(reference["phonons_THz"][q])
        dev[f"nu_max_{q}"] = (max(model["phonons_THz"][q]) - ref_max) / ref_max
    return dev
