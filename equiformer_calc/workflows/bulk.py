"""Bulk properties of cubic metals from any ASE calculator: equation of state, elastic constants, phonons.

These probe the curvature of a potential energy surface, which force errors alone do not show: a model
can have good forces and still be too soft. Used to compare a model with its teacher (model cards,
``benchmarks/bulk_properties.py``) and with EMT in tests.

* :func:`equation_of_state`: lattice constant, bulk modulus (Birch-Murnaghan fit of 9 primitive-cell
  energies within +-4 % in volume around a first guess; twice, recentred);
* :func:`cubic_elastic_constants`: C11, C12, C44 from the stress of +-0.5 % strains of the conventional
  cell (a monatomic fcc lattice has no internal relaxation, so clamped-ion = relaxed-ion);
* :func:`phonon_frequencies`: harmonic frequencies at high-symmetry points from finite displacements
  (+-0.01 A of one atom along x, y, z) in a supercell of the primitive cell, exact at commensurate
  q-points (X and L are commensurate with the default 4x4x4 supercell).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.calculator import Calculator
from ase.eos import EquationOfState

__all__ = [
    "FCC_QPOINTS", "cubic_elastic_constants", "equation_of_state", "fcc_properties", "phonon_frequencies",
    "relative_deviation",
]

#: high-symmetry points of the fcc Brillouin zone in units of 2*pi/a (Cartesian)
FCC_QPOINTS: dict[str, tuple[float, float, float]] = {"X": (1.0, 0.0, 0.0), "L": (0.5, 0.5, 0.5)}
_GPA = 1.0 / units.GPa


def _energy(atoms: Atoms, calc: Calculator) -> float:
    atoms = atoms.copy()
    atoms.calc = calc
    return float(atoms.get_potential_energy())


def equation_of_state(calc: Calculator, symbol: str, a_guess: float) -> dict[str, float]:
    """Lattice constant (A), bulk modulus (GPa) and energy per atom (eV) of fcc ``symbol``."""
    a0 = a_guess
    for _ in range(2):
        volumes, energies = [], []
        for scale in np.linspace(0.96, 1.04, 9) ** (1.0 / 3.0):
            atoms = bulk(symbol, "fcc", a=a0 * scale)
            volumes.append(atoms.get_volume())
            energies.append(_energy(atoms, calc))
        v0, e0, b = EquationOfState(volumes, energies, eos="birchmurnaghan").fit()
        a0 = float((4.0 * v0) ** (1.0 / 3.0))
    return {"a0": a0, "bulk_modulus_GPa": float(b * _GPA), "e0_per_atom": float(e0)}


def _stress(atoms: Atoms, calc: Calculator) -> np.ndarray:
    atoms = atoms.copy()
    atoms.calc = calc
    return np.asarray(atoms.get_stress(voigt=True), dtype=float)


def cubic_elastic_constants(calc: Calculator, symbol: str, a0: float, strain: float = 0.005) -> dict[str, float]:
    """C11, C12, C44 (GPa) of fcc ``symbol`` at lattice constant ``a0`` (central differences of stress)."""
    base = bulk(symbol, "fcc", a=a0, cubic=True)
    cell = base.cell.array.copy()

    def strained(eps: np.ndarray) -> Atoms:
        atoms = base.copy()
        atoms.set_cell(cell @ (np.eye(3) + eps), scale_atoms=True)
        return atoms

    exx = np.zeros((3, 3))
    exx[0, 0] = strain
    d_normal = (_stress(strained(exx), calc) - _stress(strained(-exx), calc)) / (2 * strain)
    eyz = np.zeros((3, 3))
    eyz[1, 2] = eyz[2, 1] = strain / 2  # engineering shear strain gamma_yz = strain
    d_shear = (_stress(strained(eyz), calc) - _stress(strained(-eyz), calc)) / (2 * strain)
    return {
        "C11_GPa": float(d_normal[0] * _GPA),
        "C12_GPa": float(0.5 * (d_normal[1] + d_normal[2]) * _GPA),
        "C44_GPa": float(d_shear[3] * _GPA),
    }


def phonon_frequencies(
    calc: Calculator,
    symbol: str,
    a0: float,
    qpoints: dict[str, tuple[float, float, float]] | None = None,
    supercell: int = 4,
    delta: float = 0.01,
) -> dict[str, list[float]]:
    """Phonon frequencies (THz, ascending) of fcc ``symbol`` at ``qpoints`` (units of 2*pi/a).

    Force constants of atom 0 with every atom of a ``supercell``^3 primitive supercell from central
    differences; the dynamical matrix sums them with minimum-image lattice vectors.
    """
    qpoints = FCC_QPOINTS if qpoints is None else qpoints
    prim = bulk(symbol, "fcc", a=a0)
    sc = prim.repeat((supercell, supercell, supercell))
    n = len(sc)
    phi = np.zeros((n, 3, 3))  # phi[j, a, b] = d2E / du_0a du_jb = -dF_jb / du_0a
    for a in range(3):
        forces = []
        for sign in (1.0, -1.0):
            atoms = sc.copy()
            atoms.positions[0, a] += sign * delta
            atoms.calc = calc
            forces.append(np.asarray(atoms.get_forces(), dtype=float))
        phi[:, a, :] = -(forces[0] - forces[1]) / (2 * delta)
    # minimum-image lattice vectors R_j - R_0
    frac = np.linalg.solve(sc.cell.array.T, (sc.positions - sc.positions[0]).T).T
    frac -= np.round(frac)
    vectors = frac @ sc.cell.array
    mass = float(prim.get_masses()[0])
    out: dict[str, list[float]] = {}
    for name, q in qpoints.items():
        k = 2 * np.pi / a0 * np.asarray(q, dtype=float)
        dyn = np.einsum("jab,j->ab", phi, np.exp(1j * vectors @ k)) / mass
        eig = np.linalg.eigvalsh(0.5 * (dyn + dyn.conj().T))
        # sqrt(eV / A^2 / amu) -> THz
        freq = np.sign(eig) * np.sqrt(np.abs(eig)) * np.sqrt(units._e / units._amu) * 1e10 / (2 * np.pi) / 1e12
        out[name] = sorted(float(f) for f in freq)
    return out


def fcc_properties(calc: Calculator, symbol: str, a_guess: float | None = None) -> dict[str, Any]:
    """Everything above for one fcc metal: a0, B, C11, C12, C44 and X/L phonon frequencies."""
    from ase.data import atomic_numbers, reference_states

    guess = a_guess or float(reference_states[atomic_numbers[symbol]]["a"])
    eos = equation_of_state(calc, symbol, guess)
    return {
        **eos,
        **cubic_elastic_constants(calc, symbol, eos["a0"]),
        "phonons_THz": phonon_frequencies(calc, symbol, eos["a0"]),
    }


def relative_deviation(model: dict[str, Any], reference: dict[str, Any], keys: Sequence[str]) -> dict[str, float]:
    """``(model - reference) / reference`` for scalar ``keys`` and the highest X/L phonon frequency."""
    dev = {k: (model[k] - reference[k]) / reference[k] for k in keys}
    for q in model.get("phonons_THz", {}):
        dev[f"nu_max_{q}"] = (max(model["phonons_THz"][q]) - max(reference["phonons_THz"][q])) / max(
            reference["phonons_THz"][q]
        )
    return dev
