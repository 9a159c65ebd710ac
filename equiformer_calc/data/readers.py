"""Readers of labelled structures where users keep them, for training and evaluation.

:func:`read_frames` returns ``ase.Atoms`` whose calculator (a ``SinglePointCalculator``) holds
the labels under ASE's names (``energy``, ``forces``, ``stress``), whatever they were called in
the file. It reads:

* extxyz (and any other ``ase.io`` format) with configurable keys: ``energy_key``,
  ``forces_key``, ``stress_key`` name an ``info`` / ``arrays`` entry (MACE-style ``REF_energy``,
  ``REF_forces``, ``REF_stress``) or one of the calculator results ASE parsed;
* ASE databases: ``.db`` (SQLite), ``.json``, and ``postgresql://`` / ``mysql://`` URLs through
  ``ase.db.connect`` (the server backends need ``pip install ase-db-backends``); custom keys may
  be key-value pairs or ``data`` entries of a row;
* everything ``ase.io.read`` reads, every frame: VASP ``vasprun.xml`` and ``OUTCAR`` give all
  ionic steps, as do ``.traj`` files;
* fairchem's ``.aselmdb`` files (OC20 / OMat24 / OMol-style ASE rows in LMDB), one file or a
  folder of them, read with ``lmdb`` and ASE's JSON decoder: rows are zlib-compressed JSON, and
  nothing is ever unpickled (``pip install 'equiformer-calc[lmdb]'``).

A frame without a required label (energy, forces) is a :class:`LabelError` naming the file, the
frame and the missing key, and listing the keys the frame does have.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress

from ..integrations.aselmdb import ASELMDB_SUFFIXES

__all__ = ["LabelKeys", "LabelError", "read_frames", "read_aselmdb", "is_database_url", "ASELMDB_SUFFIXES"]

log = logging.getLogger(__name__)

_DB_URL_PREFIXES = ("postgresql://", "postgres://", "mysql://", "mariadb://")


class LabelError(ValueError):
    """A frame lacks a label (or has one of the wrong shape); the message names file, frame and key."""


@dataclass(frozen=True)
class LabelKeys:
    """Where the labels are: names in ``atoms.info`` / ``atoms.arrays`` (or db key-value pairs /
    ``data``), falling back to the calculator results ASE parsed under ASE's names.

    ``stress_key`` labels are optional per frame (absent: no stress loss for that frame); energy
    and forces are required."""

    energy_key: str = "energy"
    forces_key: str = "forces"
    stress_key: str = "stress"


def is_database_url(path: str | os.PathLike) -> bool:
    """True for ``postgresql://``, ``postgres://``, ``mysql://`` and ``mariadb://`` addresses."""
    return str(path).startswith(_DB_URL_PREFIXES)


def _describe(atoms: Atoms) -> str:
    calc_keys = sorted(getattr(atoms.calc, "results", {}) or {})
    info = sorted(k for k in atoms.info if not k.startswith("_"))
    arrays = sorted(k for k in atoms.arrays if k not in ("numbers", "positions"))
    return f"info keys {info}, per-atom arrays {arrays}, calculator results {calc_keys}"


def _lookup(atoms: Atoms, key: str, per_atom: bool) -> Any:
    """The label called ``key``: a per-atom array, an ``info`` entry, or a calculator result of
    that name (``energy`` falls back to ``free_energy``); None when absent."""
    if per_atom and key in atoms.arrays:
        return atoms.arrays[key]
    if key in atoms.info:
        return atoms.info[key]
    results = getattr(atoms.calc, "results", None) or {}
    if key in results:
        return results[key]
    if key == "energy" and "free_energy" in results:
        return results["free_energy"]
    return None


def _voigt(stress: Any) -> np.ndarray:
    s = np.asarray(stress, dtype=np.float64).reshape(-1)
    if s.shape == (9,):
        s = full_3x3_to_voigt_6_stress(s.reshape(3, 3))
    if s.shape != (6,):
        raise ValueError(f"shape {np.shape(stress)} (want 6 Voigt or 3x3)")
    return s


def relabel(atoms: Atoms, keys: LabelKeys, where: str) -> Atoms:
    """``atoms`` with a SinglePointCalculator holding ``energy``, ``forces`` and (when present and
    the frame is 3D-periodic) ``stress`` taken from ``keys``; ``where`` ("file, frame k") goes
    into the error messages."""
    energy = _lookup(atoms, keys.energy_key, per_atom=False)
    if energy is None:
        raise LabelError(f"{where}: no energy label {keys.energy_key!r}; the frame has {_describe(atoms)}")
    forces = _lookup(atoms, keys.forces_key, per_atom=True)
    if forces is None:
        raise LabelError(f"{where}: no forces label {keys.forces_key!r}; the frame has {_describe(atoms)}")
    try:
        energy = float(np.asarray(energy).reshape(()))
    except (TypeError, ValueError):
        raise LabelError(f"{where}: energy label {keys.energy_key!r} is not one number: {energy!r}") from None
    forces = np.asarray(forces, dtype=np.float64)
    if forces.shape != (len(atoms), 3):
        raise LabelError(f"{where}: forces label {keys.forces_key!r} has shape {forces.shape}, want ({len(atoms)}, 3)")
    results: dict[str, Any] = {"energy": energy, "free_energy": energy, "forces": forces}
    stress = _lookup(atoms, keys.stress_key, per_atom=False)
    if stress is not None and atoms.pbc.all():
        try:
            results["stress"] = _voigt(stress)
        except ValueError as exc:
            raise LabelError(f"{where}: stress label {keys.stress_key!r} has {exc}") from None
    out = atoms.copy()
    for key in (keys.energy_key, keys.stress_key):
        out.info.pop(key, None)
    if keys.forces_key not in ("numbers", "positions"):
        out.arrays.pop(keys.forces_key, None)
    out.calc = SinglePointCalculator(out, **results)
    return out


# ----------------------------------------------------------------------------------- ASE db
def _row_to_atoms(row: Any) -> Atoms:
    """An ASE db row -> Atoms with its calculator results, key-value pairs in ``info`` and
    ``data`` entries in ``arrays`` (per-atom) or ``info``."""
    atoms = row.toatoms(add_additional_information=False)
    atoms.info.update(dict(row.get("key_value_pairs", {}) or {}))
    data = row.get("data", {}) or {}
    for key, value in dict(data).items():
        arr = np.asarray(value) if isinstance(value, (list, tuple, np.ndarray)) else None
        if arr is not None and arr.ndim >= 1 and arr.shape[0] == len(atoms) and arr.dtype != object:
            atoms.arrays[key] = arr
        else:
            atoms.info[key] = value
    return atoms


def _read_ase_db(name: str) -> Iterator[Atoms]:
    from ase.db import connect

    try:
        db = connect(name)
    except ImportError as exc:
        raise ImportError(f"{name}: this database type needs an extra backend ({exc}); pip install ase-db-backends") from exc
    with db:
        for row in db.select():
            yield _row_to_atoms(row)


# ---------------------------------------------------------------------------------- aselmdb
def read_aselmdb(path: str | os.PathLike) -> Iterator[Atoms]:
    """Frames of a fairchem ``.aselmdb`` file (or every such file of a folder, sorted by name), in
    id order, labels under ASE's names (rows from :func:`equiformer_calc.integrations.aselmdb.read_rows`:
    zlib-compressed JSON decoded with ASE's decoder, never unpickled)."""
    from ..integrations.aselmdb import read_rows

    for row in read_rows(path):
        yield _row_to_atoms(row)


# ------------------------------------------------------------------------------------ entry
#: compressed-file suffixes that ASE reads through a stream whose backward seeks decompress from the start
_COMPRESSED = {".xz": "lzma", ".gz": "gzip", ".bz2": "bz2"}


def open_seekable(path: Path) -> Any:
    """``path`` itself, or for a compressed file its text decompressed once into memory.

    ASE's extxyz reader indexes the frames and then seeks back to each one; on an xz/gz/bz2 stream
    every backward seek decompresses from the beginning again, which made reading the 10,401-frame
    teacher training set quadratic (minutes of CPU without finishing). One decompression into a
    ``StringIO`` keeps it linear.
    """
    import importlib
    import io

    module = _COMPRESSED.get(path.suffix)
    if module is None:
        return str(path)
    with importlib.import_module(module).open(path, "rt") as fh:
        return io.StringIO(fh.read())


def _format_of(path: Path) -> str | None:
    """ASE's format name for a compressed file (its own guess needs the file name, not a stream)."""
    if path.suffix not in _COMPRESSED:
        return None
    from ase.io.formats import filetype

    return filetype(str(path), read=False)


def read_frames(
    path: str | os.PathLike,
    keys: LabelKeys | None = None,
    index: str = ":",
    format: str | None = None,
) -> list[Atoms]:
    """Every labelled frame of ``path`` (a file, a folder of ``.aselmdb`` files, or a database
    URL), relabelled with ``keys`` (see :class:`LabelKeys`); ``index`` and ``format`` go to
    ``ase.io.read`` for file formats. Raises ``FileNotFoundError`` for a missing file and
    :class:`LabelError` for a frame without a required label."""
    keys = keys or LabelKeys()
    name = str(path)
    if is_database_url(name):
        frames: Any = _read_ase_db(name)
        label = name.split("@")[-1]  # never log a password
    else:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"dataset {p} does not exist")
        label = str(p)
        if format == "aselmdb" or p.suffix in ASELMDB_SUFFIXES or (p.is_dir() and format is None):
            frames = read_aselmdb(p)
        elif format in ("db", "json") or (format is None and p.suffix == ".db"):
            frames = _read_ase_db(name)
        else:
            from ase.io import read

            frames = read(open_seekable(p), index=index, format=format or _format_of(p))
            frames = [frames] if isinstance(frames, Atoms) else frames
    out = [relabel(atoms, keys, f"{label}, frame {k}") for k, atoms in enumerate(frames)]
    if not out:
        raise ValueError(f"{label}: no frames")
    log.info("read %d frames from %s", len(out), label)
    return out
