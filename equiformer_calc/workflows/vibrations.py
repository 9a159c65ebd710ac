"""Vibrational analysis by finite differences, with every displaced structure evaluated in batched
model calls.

:func:`vibrate` displaces each selected atom (the adsorbate by default: the slab stays fixed) by
``+-delta`` (and ``+-2 delta`` with ``nfree=4``) along x, y and z, evaluates all displaced copies in
batched ``predict`` calls of the calculator, forms the Hessian rows of the selected atoms with ASE's
central-difference formulas (``H_ij = -dF_j/dx_i``, then symmetrised), and hands it to ASE's
:class:`ase.vibrations.VibrationsData` for the mass-weighted normal modes. The frequencies equal
``ase.vibrations.Vibrations`` on the same calculator (same ``delta`` and ``nfree``); only the model
calls differ: one batched call for all displacements instead of one call per displacement.

Imaginary modes (a saddle point, or a structure that is not a minimum) and soft modes (below
``soft_threshold`` cm^-1, e.g. frustrated translations of a weakly bound adsorbate) are reported in
:class:`VibrationResult`, never dropped silently.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms

from ..io import progress as tqdm  # live bar on a terminal, plain lines in a log
from ._common import resolve_calculator, write_csv

if TYPE_CHECKING:  # ase.vibrations imports pyplot (via ase.utils.plotting): imported where used
    import ase.vibrations

__all__ = ["VibrationResult", "VibrationJournal", "read_journal", "vibrate", "vibrate_many", "adsorbate_indices", "select_atoms",
           "count_evaluations", "evaluate_forces", "NON_METALS"]

log = logging.getLogger(__name__)

#: elements counted as adsorbate atoms (displaced by default)
NON_METALS: frozenset[str] = frozenset(
    "H He B C N O F Ne Si P S Cl Ar As Se Br Kr Te I Xe".split()
)
#: modes below this (cm^-1, real) are reported as soft
SOFT_THRESHOLD_CM: float = 50.0


def adsorbate_indices(atoms: Atoms) -> list[int]:
    """The atoms a vibrational analysis displaces by default: every non-metal atom
    (:data:`NON_METALS`), i.e. the adsorbate on a metal slab, all atoms of a bare molecule. (Tags are
    not used: ASE's slab builders tag layers 1, 2, ... where OC20 tags the adsorbate 2.) Raises
    ``ValueError`` when there is none: give ``indices`` then (e.g. for a metal adatom)."""
    picked = [i for i, s in enumerate(atoms.get_chemical_symbols()) if s in NON_METALS]
    if not picked:
        raise ValueError(
            f"{atoms.get_chemical_formula()}: no adsorbate atoms (no non-metal atom); "
            "give the atoms to displace with indices=..."
        )
    return picked


def evaluate_forces(calc: Any, structures: Sequence[Atoms], batch_size: int = 64, progress: bool = False,
                    what: str = "structures") -> list[dict[str, Any]]:
    """Energies and forces of ``structures``: batched ``calc.predict`` calls of ``batch_size``
    structures when the calculator has ``predict`` (an :class:`~equiformer_calc.EquiformerCalculator`,
    local or remote), else one ``get_forces`` per structure (any ASE calculator). Forces are the raw
    model forces (constraints are not applied)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    structures = list(structures)
    out: list[dict[str, Any]] = []
    starts = range(0, len(structures), batch_size)
    bar = tqdm(total=len(structures), desc=what, unit="structure", disable=not progress or len(starts) < 2)
    for start in starts:
        chunk = structures[start : start + batch_size]
        if hasattr(calc, "predict"):
            out.extend(calc.predict(chunk, properties=["energy", "forces"]))
        else:
            for atoms in chunk:
                atoms = atoms.copy()
                atoms.calc = calc
                out.append({"energy": atoms.get_potential_energy(),
                            "forces": atoms.get_forces(apply_constraint=False)})
        bar.update(len(chunk))
    bar.close()
    return out


@dataclass
class VibrationResult:
    """One vibrational analysis.

    ``indices``: the displaced atoms; ``hessian``: (3n, 3n) eV/A^2 over them (symmetrised);
    ``frequencies``: cm^-1, ascending, imaginary ones as negative numbers; ``energies``: eV, the
    same modes as ASE's complex convention (imaginary modes have an imaginary part); ``modes``:
    (3n, natoms, 3) mass-weighted displacement vectors; ``data``: ASE's ``VibrationsData`` (for
    ``write_jmol``, ``tabulate`` ...); ``energy``: the undisplaced structure's energy (eV);
    ``n_calls``: batched model calls made.
    """

    atoms: Atoms
    indices: list[int]
    hessian: np.ndarray
    frequencies: np.ndarray
    energies: np.ndarray
    modes: np.ndarray
    data: ase.vibrations.VibrationsData
    energy: float
    delta: float
    nfree: int
    soft_threshold: float = SOFT_THRESHOLD_CM
    n_calls: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def imaginary(self) -> np.ndarray:
        """Imaginary frequencies (cm^-1, given as negative numbers; a saddle point has one)."""
        return self.frequencies[self.frequencies < 0]

    @property
    def soft(self) -> np.ndarray:
        """Real frequencies below ``soft_threshold`` cm^-1."""
        f = self.frequencies
        return f[(f >= 0) & (f < self.soft_threshold)]

    @property
    def real_energies(self) -> np.ndarray:
        """Vibrational energies (eV) of the real modes, ascending (what ``HarmonicThermo`` takes)."""
        return np.sort(self.energies.real[self.frequencies >= 0])

    @property
    def zero_point_energy(self) -> float:
        """Zero-point energy (eV) of the real modes, 0.5 * sum(h nu)."""
        return float(0.5 * self.real_energies.sum())

    def summary(self) -> str:
        """One line: counts of modes, imaginary and soft ones, and the ZPE."""
        imag = ", ".join(f"{-f:.1f}i" for f in self.imaginary)
        soft = ", ".join(f"{f:.1f}" for f in self.soft)
        return (f"{len(self.frequencies)} modes of {len(self.indices)} atoms; ZPE {self.zero_point_energy:.4f} eV; "
                f"imaginary: {imag or 'none'}; soft (<{self.soft_threshold:g} cm^-1): {soft or 'none'}")

    def write_csv(self, path: str | os.PathLike) -> Path:
        """One row per mode: index, frequency (cm^-1; negative = imaginary), energy (meV), kind."""
        rows = []
        for k, (f, e) in enumerate(zip(self.frequencies, self.energies)):
            kind = "imaginary" if f < 0 else "soft" if f < self.soft_threshold else "real"
            rows.append([k, f"{f:.3f}", f"{1000 * abs(e):.4f}", kind])
        return write_csv(path, ["mode", "frequency_cm-1", "energy_meV", "kind"], rows)


def _displacements(nfree: int) -> tuple[int, ...]:
    if nfree == 2:
        return (-1, 1)
    if nfree == 4:
        return (-2, -1, 1, 2)
    raise ValueError(f"nfree must be 2 or 4 (central differences with 2 or 4 displacements), got {nfree}")


def count_evaluations(n_atoms: int, nfree: int) -> int:
    """Structures one analysis evaluates: the undisplaced one, and ``nfree`` displacements of each of
    the ``3 * n_atoms`` coordinates (``ValueError`` for an ``nfree`` other than 2 or 4)."""
    return 1 + 3 * n_atoms * len(_displacements(nfree))


def select_atoms(atoms: Atoms, indices: Sequence[int] | np.ndarray | None) -> list[int]:
    """The atoms to displace, as a list of distinct indices in ``0..len(atoms)-1``, from a list of
    indices (negative ones count from the end), a boolean mask of ``len(atoms)`` entries, or
    ``None`` (:func:`adsorbate_indices`); ``ValueError`` naming the problem otherwise."""
    if indices is None:
        return adsorbate_indices(atoms)
    idx = np.asarray(indices)
    if idx.dtype == bool:
        if idx.shape != (len(atoms),):
            raise ValueError(f"a boolean mask needs {len(atoms)} entries, got {idx.shape}")
        idx = np.flatnonzero(idx)
    idx = [int(i) for i in idx.ravel()]
    if not idx:
        raise ValueError("no atoms to displace: indices is empty")
    bad = [i for i in idx if not -len(atoms) <= i < len(atoms)]
    if bad:
        raise ValueError(f"indices {bad} out of range for {len(atoms)} atoms")
    idx = [i % len(atoms) for i in idx]
    if len(set(idx)) != len(idx):
        raise ValueError(f"indices repeat an atom: {idx}")
    return idx


def _displaced(atoms: Atoms, indices: list[int], delta: float, nfree: int) -> list[Atoms]:
    """The undisplaced structure, then for each (atom, axis) the displacements of ``_displacements``."""
    base = atoms.copy()
    base.calc = None
    out = [base]
    for a in indices:
        for i in range(3):
            for k in _displacements(nfree):
                d = base.copy()
                d.positions[a, i] += k * delta
                out.append(d)
    return out


def _hessian(forces: list[np.ndarray], indices: list[int], delta: float, nfree: int) -> np.ndarray:
    """ASE's central-difference Hessian rows (``-dF/dx``) of the displaced atoms, symmetrised."""
    n = 3 * len(indices)
    h = np.empty((n, n))
    per = len(_displacements(nfree))
    for r in range(n):
        f = forces[r * per : (r + 1) * per]
        if nfree == 2:
            diff = f[0] - f[1]  # F(-d) - F(+d)
        else:
            diff = (-f[0] + 8 * f[1] - 8 * f[2] + f[3]) / 6.0
        h[r] = diff[indices].ravel() / (2 * delta)
    return 0.5 * (h + h.T)


def _result(atoms: Atoms, indices: list[int], hessian: np.ndarray, energy: float, delta: float, nfree: int,
            soft_threshold: float, n_calls: int) -> VibrationResult:
    base = atoms.copy()
    base.calc = None
    from ase.vibrations import VibrationsData

    data = VibrationsData.from_2d(base, hessian, indices=indices)
    energies = np.asarray(data.get_energies())
    frequencies = np.asarray(data.get_frequencies())
    # ASE's convention: imaginary modes have imaginary parts; as real numbers they are negative
    freq = np.where(np.abs(frequencies.imag) > np.abs(frequencies.real), -np.abs(frequencies.imag),
                    frequencies.real)
    order = np.argsort(freq)
    modes = np.asarray(data.get_modes(all_atoms=True))[order]
    res = VibrationResult(base, indices, hessian, freq[order], energies[order], modes, data, energy, delta, nfree,
                          soft_threshold, n_calls)
    if len(res.imaginary):
        res.notes.append(f"{len(res.imaginary)} imaginary mode(s): "
                         + ", ".join(f"{-f:.1f}i cm^-1" for f in res.imaginary))
    if len(res.soft):
        res.notes.append(f"{len(res.soft)} soft mode(s) below {soft_threshold:g} cm^-1: "
                         + ", ".join(f"{f:.1f}" for f in res.soft))
    return res


def read_journal(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The complete lines of a JSON-lines journal. A last line cut by a kill (no newline, or not
    JSON) and anything after it are removed from the file, so that new lines append cleanly."""
    path = Path(path)
    if not path.exists():
        return []
    records, good = [], 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                records.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            good += len(line)
    if good < path.stat().st_size:
        log.warning("%s: dropping an incomplete last entry (interrupted write)", path)
        with open(path, "r+b") as f:
            f.truncate(good)
    return records


class VibrationJournal:
    """Finished vibrational analyses in a JSON-lines file (one line per structure: its key, displaced
    atoms, Hessian, energy and settings), so that a long batch of analyses (every best site of a
    screen) continues after an interruption, even SIGKILL: a line cut by a kill is ignored. Keys are
    the caller's (e.g. model hash + database row id); a key of other settings is recomputed."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.records = {rec["key"]: rec for rec in read_journal(self.path)}

    def get(self, key: str, atoms: Atoms, delta: float, nfree: int, soft_threshold: float) -> VibrationResult | None:
        """The journalled analysis of ``key`` with these settings, rebuilt on ``atoms``; else None."""
        rec = self.records.get(key)
        if rec is None or rec["delta"] != delta or rec["nfree"] != nfree or rec["natoms"] != len(atoms):
            return None
        return _result(atoms, rec["indices"], np.asarray(rec["hessian"], dtype=float), rec["energy"], delta, nfree,
                       soft_threshold, 0)

    def put(self, key: str, result: VibrationResult) -> None:
        """Append ``result`` under ``key`` (flushed and synced before returning)."""
        rec = {"key": key, "indices": result.indices, "hessian": result.hessian.tolist(), "energy": result.energy,
               "delta": result.delta, "nfree": result.nfree, "natoms": len(result.atoms)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[key] = rec


def vibrate_many(
    structures: Sequence[Atoms],
    indices: Sequence[Sequence[int] | np.ndarray | None] | None = None,
    calculator: Any = None,
    delta: float = 0.01,
    nfree: int = 2,
    soft_threshold: float = SOFT_THRESHOLD_CM,
    batch_size: int = 128,
    progress: bool = True,
    warn: bool = True,
    journal: VibrationJournal | str | os.PathLike | None = None,
    keys: Sequence[str] | None = None,
    chunk_size: int = 16,
) -> list[VibrationResult]:
    """:func:`vibrate` of several structures, all their displacements in shared batched calls (e.g.
    every best site of a screen and the gas references at once). ``indices``: one entry per
    structure (``None``: :func:`adsorbate_indices`). warn: log each result's imaginary and soft
    modes (callers that drop a molecule's translations and rotations check the rest themselves).
    journal / keys: a :class:`VibrationJournal` (or its path) and one key per structure: journalled
    structures are not recomputed, the others are computed ``chunk_size`` structures at a time and
    journalled as each chunk finishes."""
    structures = list(structures)
    if not structures:
        return []
    if delta <= 0:
        raise ValueError(f"delta must be > 0 A, got {delta}")
    per_structure = list(indices) if indices is not None else [None] * len(structures)
    if len(per_structure) != len(structures):
        raise ValueError(f"{len(per_structure)} index lists for {len(structures)} structures")
    calc = resolve_calculator(calculator)
    chosen = [select_atoms(a, ix) for a, ix in zip(structures, per_structure)]
    if journal is None:
        return _vibrate_chunk(structures, chosen, calc, delta, nfree, soft_threshold, batch_size, progress, warn)
    if keys is None or len(keys) != len(structures):
        raise ValueError("a journal needs one key per structure (keys=...)")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    book = journal if isinstance(journal, VibrationJournal) else VibrationJournal(journal)
    out: list[VibrationResult | None] = [book.get(k, a, delta, nfree, soft_threshold) for k, a in zip(keys, structures)]
    todo = [i for i, r in enumerate(out) if r is None]
    if len(todo) < len(structures):
        log.info("vibrations: %d of %d structures found in %s", len(structures) - len(todo), len(structures), book.path)
    for start in range(0, len(todo), chunk_size):
        part = todo[start : start + chunk_size]
        results = _vibrate_chunk([structures[i] for i in part], [chosen[i] for i in part], calc, delta, nfree,
                                 soft_threshold, batch_size, progress, warn)
        for i, res in zip(part, results):
            book.put(keys[i], res)
            out[i] = res
    return [r for r in out if r is not None]


def _vibrate_chunk(structures: Sequence[Atoms], chosen: list[list[int]], calc: Any, delta: float, nfree: int,
                   soft_threshold: float, batch_size: int, progress: bool, warn: bool) -> list[VibrationResult]:
    """The vibrations of ``structures`` (displacing ``chosen`` atoms), all displacements batched."""
    jobs = [_displaced(a, ix, delta, nfree) for a, ix in zip(structures, chosen)]
    flat = [s for job in jobs for s in job]
    log.info("vibrations: %d displaced structures of %d system(s) in batches of %d", len(flat), len(jobs), batch_size)
    results = evaluate_forces(calc, flat, batch_size=batch_size, progress=progress, what="displacements")
    n_calls = -(-len(flat) // batch_size) if hasattr(calc, "predict") else len(flat)
    out = []
    start = 0
    for atoms, ix, job in zip(structures, chosen, jobs):
        part = results[start : start + len(job)]
        start += len(job)
        hessian = _hessian([np.asarray(r["forces"]) for r in part[1:]], ix, delta, nfree)
        res = _result(atoms, ix, hessian, float(part[0]["energy"]), delta, nfree, soft_threshold, n_calls)
        for note in res.notes if warn else ():
            log.warning("%s: %s", atoms.get_chemical_formula(), note)
        out.append(res)
    return out


def vibrate(
    atoms: Atoms,
    indices: Sequence[int] | np.ndarray | None = None,
    calculator: Any = None,
    delta: float = 0.01,
    nfree: int = 2,
    soft_threshold: float = SOFT_THRESHOLD_CM,
    batch_size: int = 128,
    progress: bool = True,
) -> VibrationResult:
    """Harmonic vibrations of ``atoms`` by finite differences, the displaced copies evaluated in
    batched model calls.

    indices: atoms to displace (a list or a boolean mask; default: the adsorbate, see
    :func:`adsorbate_indices`; the other atoms stay fixed, as in ASE's ``Vibrations(indices=...)``).
    delta (A) and nfree (2 or 4): ASE's displacement and stencil. calculator: the model (a calculator, a
    Predictor, a :class:`~equiformer_calc.calculators.settings.ModelSettings`, a checkpoint name or
    path; default: the shipped checkpoint; ``ModelSettings(dtype="float64")`` gives the most
    precise Hessian). batch_size: displaced structures per model call. Use a relaxed structure: at
    a non-stationary point the harmonic modes are not meaningful, and imaginary modes are
    reported (``result.imaginary``, ``result.notes``)."""
    return vibrate_many([atoms], [indices], calculator=calculator, delta=delta, nfree=nfree,
                        soft_threshold=soft_threshold, batch_size=batch_size, progress=progress)[0]
