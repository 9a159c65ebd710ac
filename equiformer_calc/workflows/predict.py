"""Batch prediction: energy, forces (and stress of 3D-periodic cells) of every structure in a file.

Command line::

    equiformer-calc predict structures.extxyz --out predictions.extxyz [--checkpoint NAME|PATH]
    equiformer-calc predict screen.db --out predictions.csv --workers 4
    equiformer-calc predict big.extxyz --out p.extxyz --scheduler tcp://HOST:8786 --chunk-size 256

The input is an extxyz file, an ASE database (``.db``: every row) or anything ``ase.io.read``
reads. Structures are cut into tasks of ``--chunk-size`` structures; each task is one batched
:meth:`~equiformer_calc.predictor.Predictor.predict` call per atom budget on the model of the
process that runs it: here, or a Dask worker (``--workers N`` / ``--scheduler ADDRESS``, see
:mod:`equiformer_calc.distributed`). The numbers are a function of the chunks (and of torch's
threads per process), not of where they ran. A structure the model cannot take (unknown element,
atoms on top of each other, ...) gets an error naming the problem and no numbers; the others are
predicted.

Outputs, in input order:

* ``.extxyz`` / ``.xyz``: the input structures with the predictions as their labels (``energy``,
  ``forces``, ``stress``; the Predictor's per-atom ``energies`` as an array), the input's ``info``
  kept; a failed structure carries ``info["predict_error"]`` and no labels.
* ``.csv``: one row per structure (``index``, ``formula``, ``n_atoms``, ``energy``,
  ``energy_per_atom``, ``fmax``, ``stress_xx .. stress_xy``, ``error``) and beside it
  ``<stem>_forces.csv`` with one row per atom (``index``, ``atom``, ``symbol``, ``fx``, ``fy``, ``fz``).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from ..io import write_csv
from ._common import resolve_calculator

__all__ = ["PredictChunk", "predict_chunk", "PredictResult", "read_structures", "predict_file"]

log = logging.getLogger(__name__)


_VOIGT = ("xx", "yy", "zz", "yz", "xz", "xy")


@dataclass
class PredictChunk:
    """One fan-out task: ``structures`` predicted with the executor's model ``model`` (a key);
    ``forces``: also forces (and stress of 3D-periodic structures), False for energy-only models."""

    model: str
    structures: list[Atoms]
    forces: bool = True


def predict_chunk(chunk: PredictChunk) -> list[dict[str, Any] | str]:
    """Run a :class:`PredictChunk` where it lands: per structure, the Predictor's results (numpy
    arrays) or the error that stopped it. Valid structures are predicted together (periodic
    ones with stress in one call, the others in another)."""
    from ..distributed import worker_model

    predictor = worker_model(chunk.model).predictor
    out: list[dict[str, Any] | str] = [""] * len(chunk.structures)
    groups: dict[bool, list[int]] = {True: [], False: []}
    for k, atoms in enumerate(chunk.structures):
        try:
            predictor.to_structure(atoms)
        except ValueError as exc:
            out[k] = f"{type(exc).__name__}: {exc}"
            continue
        groups[bool(chunk.forces and atoms.pbc.all())].append(k)
    base = ["energy", "energies"] + (["forces"] if chunk.forces else [])
    for periodic, idx in groups.items():
        if not idx:
            continue
        props = base + (["stress"] if periodic else [])
        try:
            results = predictor.predict([chunk.structures[k] for k in idx], properties=props)
        except ValueError:  # a structure that validates but cannot be evaluated: find it, keep the rest
            results = []
            for k in idx:
                try:
                    results.append(predictor.predict([chunk.structures[k]], properties=props)[0])
                except ValueError as exc:
                    # the predictor names the structure's place in its call ("structure 0: "), which
                    # here is always 0: the caller names the structure by its index in the input
                    results.append(f"{type(exc).__name__}: {re.sub(r'^structure 0: ', '', str(exc))}")
        for k, r in zip(idx, results):
            out[k] = r
    return out


@dataclass
class PredictResult:
    """structures: the inputs with their predictions attached (SinglePointCalculator); errors:
    input index -> why it has none; files written."""

    structures: list[Atoms]
    errors: dict[int, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def read_structures(path: str | os.PathLike, index: str = ":") -> list[Atoms]:
    """Every structure of an extxyz / ASE database (``.db``: all rows, ``info["db_id"]`` = row id)
    / any ase.io-readable file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such input file: {path}")
    if path.suffix == ".db":
        import ase.db

        frames = []
        for row in ase.db.connect(str(path)).select():
            atoms = row.toatoms()
            atoms.info.update(row.key_value_pairs)
            atoms.info["db_id"] = row.id
            frames.append(atoms)
        return frames
    from ase.io import read

    frames = read(str(path), index=index)
    return frames if isinstance(frames, list) else [frames]


def predict_file(
    structures: str | os.PathLike | Sequence[Atoms],
    out: str | os.PathLike | None = None,
    calculator: Any = None,
    executor: Any = None,
    chunk_size: int = 64,
) -> PredictResult:
    """Predict every structure (a file, see :func:`read_structures`, or a list of Atoms) in tasks
    of ``chunk_size`` on ``executor`` (default: in this process); write ``out`` (.extxyz / .xyz
    or .csv) when given. ``calculator``: the model (an EquiformerCalculator, a Predictor, a
    :class:`~equiformer_calc.calculators.settings.ModelSettings`, a checkpoint name or path; None:
    the default checkpoint)."""
    from ..distributed import SerialExecutor
    from ..predictor import model_task

    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    suffix = Path(out).suffix.lower() if out is not None else ""
    if out is not None and suffix not in (".extxyz", ".xyz", ".csv"):
        raise ValueError(f"output {out}: write .extxyz, .xyz or .csv")
    frames = read_structures(structures) if isinstance(structures, (str, os.PathLike)) else list(structures)
    calc = resolve_calculator(calculator)
    forces = model_task(calc.model) == "potential"
    executor = executor if executor is not None else SerialExecutor()
    key = executor.register_model(calc)
    starts = range(0, len(frames), chunk_size)
    chunks = (PredictChunk(key, frames[i : i + chunk_size], forces) for i in starts)
    results: list[dict[str, Any] | str | None] = [None] * len(frames)
    for outcome in executor.map(predict_chunk, chunks, name="predict"):
        first = starts[outcome.index]
        values = outcome.value if outcome.error is None else [f"task failed: {outcome.error}"] * len(
            frames[first : first + chunk_size])
        for j, value in enumerate(values):
            results[first + j] = value
    labelled: list[Atoms] = []
    errors: dict[int, str] = {}
    for k, (atoms, r) in enumerate(zip(frames, results)):
        atoms = atoms.copy()
        if isinstance(r, dict):
            atoms.calc = SinglePointCalculator(
                atoms, **{p: r[p] for p in ("energy", "forces", "stress") if p in r}
            )
            atoms.arrays["energies"] = np.asarray(r["energies"], dtype=float)
        else:
            errors[k] = str(r)
            atoms.info["predict_error"] = str(r)
            log.error("structure %d: %s", k, r)
        labelled.append(atoms)
    files = [_write(labelled, results, Path(out))] if out is not None else []
    if out is not None and suffix == ".csv":
        files.append(_write_forces_csv(labelled, results, forces_csv_path(Path(out))))
    log.info("predicted %d of %d structures (%s)", len(frames) - len(errors), len(frames), executor.description)
    return PredictResult(labelled, errors, files)


def _write(frames: list[Atoms], results: list[Any], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() != ".csv":
        from ase.io import write

        from ..io import atomic_path

        with atomic_path(out, suffix=out.suffix) as tmp:
            write(tmp, frames, format="extxyz")
        return out
    header = ["index", "formula", "n_atoms", "energy", "energy_per_atom", "fmax",
              *[f"stress_{c}" for c in _VOIGT], "error"]
    rows = []
    for k, (atoms, r) in enumerate(zip(frames, results)):
        ok = isinstance(r, dict)
        energy = float(r["energy"]) if ok else float("nan")
        fmax = float(np.linalg.norm(r["forces"], axis=1).max()) if ok and "forces" in r and len(atoms) else float("nan")
        stress = list(np.asarray(r["stress"], dtype=float)) if ok and "stress" in r else [""] * 6
        rows.append([k, atoms.get_chemical_formula(), len(atoms), energy, energy / max(len(atoms), 1), fmax,
                     *stress, "" if ok else str(r)])
    return write_csv(out, header, rows)


def _write_forces_csv(frames: list[Atoms], results: list[Any], out: Path) -> Path:
    rows = []
    for k, (atoms, r) in enumerate(zip(frames, results)):
        if isinstance(r, dict) and "forces" in r:
            for i, (symbol, f) in enumerate(zip(atoms.get_chemical_symbols(), np.asarray(r["forces"]))):
                rows.append([k, i, symbol, float(f[0]), float(f[1]), float(f[2])])
    return write_csv(out, ["index", "atom", "symbol", "fx", "fy", "fz"], rows)


def forces_csv_path(out: Path) -> Path:
    """The per-atom forces table written beside a ``.csv`` output: ``<stem>_forces.csv``."""
    return out.with_name(f"{out.stem}_forces.csv")
