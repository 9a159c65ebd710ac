"""Labellers: the reference calculators that make training labels (EMT, a teacher potential, your own).

A labeller is named by a short string, the same one ``equiformer-calc datagen --labeller`` takes:

* ``emt``: ASE's effective-medium theory (a toy potential; fast; Al, Cu, Ag, Au, Ni, Pd, Pt, H, C, N, O).
* ``sevennet`` (or ``sevennet:MODEL``, default model ``7net-0``): SevenNet, a universal potential
  trained on PBE/PBE+U Materials Project relaxation trajectories, whose weights ship inside the ``sevenn``
  wheel (``pip install -e ".[teacher]"``); runs offline.
* ``module:factory`` (or ``module.sub:factory``): any importable callable that returns an ASE
  calculator, the way to plug in your own DFT code or MLIP. ``factory()`` is called once per worker
  process.

:func:`resolve_labeller` turns the string into a :class:`Labeller` that records a name and a version
(stored in every labelled frame) and builds the calculator lazily, once per process.
:class:`JournaledCalculator` wraps it so that each computed label is appended to a journal file at
once; a task rerun after ``kill -9`` replays its finished calls from the journal instead of paying
for them again.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

logger = logging.getLogger(__name__)

__all__ = ["JournaledCalculator", "LabelJournal", "Labeller", "LabellerError", "resolve_labeller"]

#: Elements ASE's EMT parameterises.
EMT_ELEMENTS = frozenset({"Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt", "H", "C", "N", "O"})


class LabellerError(ValueError):
    """A labeller string that cannot be resolved (unknown name, missing package, bad factory)."""


@dataclass(frozen=True)
class Labeller:
    """A named, versioned source of labels.

    Attributes:
        name: the string it was resolved from (``emt``, ``sevennet:7net-0``, ``pkg.mod:factory``).
        version: what produced the labels, as precisely as the package tells (recorded per frame).
        factory: builds the ASE calculator; called at most once per process by :meth:`calculator`.
        elements: elements it supports, or ``None`` when unknown (then every element is attempted).
    """

    name: str
    version: str
    factory: Callable[[], Calculator] = field(repr=False, compare=False)
    elements: frozenset[str] | None = None

    def calculator(self) -> Calculator:
        """The process-wide calculator of this labeller (built on first use, then reused)."""
        calc = _CALCULATORS.get(self.name)
        if calc is None:
            start = time.perf_counter()
            calc = self.factory()
            _CALCULATORS[self.name] = calc
            logger.info("labeller %s (%s) ready in %.1f s", self.name, self.version, time.perf_counter() - start)
        return calc

    def check_elements(self, symbols: set[str]) -> None:
        """Raise :class:`LabellerError` naming any element the labeller does not cover."""
        if self.elements is None:
            return
        missing = sorted(symbols - self.elements)
        if missing:
            raise LabellerError(f"labeller {self.name!r} does not support element(s) {missing}")


_CALCULATORS: dict[str, Calculator] = {}


def _package_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def _emt() -> Calculator:
    from ase.calculators.emt import EMT

    return EMT()


def resolve_labeller(spec: str) -> Labeller:
    """Turn ``emt`` | ``sevennet[:MODEL]`` | ``module:factory`` into a :class:`Labeller`.

    Raises:
        LabellerError: unknown name, teacher package not installed, or a factory that does not
            import or is not callable.
    """
    spec = spec.strip()
    if spec == "emt":
        return Labeller("emt", f"ase {_package_version('ase')} EMT", _emt, EMT_ELEMENTS)
    if spec == "sevennet" or spec.startswith("sevennet:"):
        from ..integrations import sevennet

        model = spec.partition(":")[2] or sevennet.DEFAULT_MODEL
        try:
            importlib.import_module("sevenn")
        except ImportError as exc:
            raise LabellerError(
                "labeller 'sevennet' needs the teacher extra: pip install -e \".[teacher]\" "
                f"({exc.__class__.__name__}: {exc})"
            ) from exc
        return Labeller(f"sevennet:{model}", f"sevenn {_package_version('sevenn')} {model}", sevennet.factory(model))
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise LabellerError(
            f"unknown labeller {spec!r}: use 'emt', 'sevennet[:MODEL]' or 'module:factory' "
            "(an importable callable returning an ASE calculator)"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LabellerError(f"labeller {spec!r}: cannot import module {module_name!r} ({exc})") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise LabellerError(f"labeller {spec!r}: {module_name}.{attr} is not a callable returning an ASE calculator")
    top = module_name.split(".")[0]
    version = getattr(module, "__version__", None) or _package_version(top)
    return Labeller(spec, f"{module_name}:{attr} ({top} {version})", factory)


# --------------------------------------------------------------------------------------
# Journal: labels survive kill -9
# --------------------------------------------------------------------------------------


def frame_key(atoms: Atoms) -> str:
    """Hash of what a label depends on: atomic numbers, positions, cell, periodicity (exact bytes)."""
    digest = hashlib.sha1()
    digest.update(np.ascontiguousarray(atoms.numbers, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(atoms.positions, dtype=np.float64).tobytes())
    digest.update(np.ascontiguousarray(atoms.cell.array, dtype=np.float64).tobytes())
    digest.update(np.asarray(atoms.pbc, dtype=bool).tobytes())
    return digest.hexdigest()


class LabelJournal:
    """Append-only JSON-lines file of computed labels, keyed by :func:`frame_key`.

    Each label is written and flushed as soon as it is computed, so a process killed at any point
    loses at most the call in flight. Floats are stored with ``repr`` precision, so a replayed
    label is bit-identical and a replayed trajectory follows the same path. A torn last line (the
    process died while writing it) is ignored on reading. A label may also carry the positions it was
    computed at (``put(..., positions=...)``): :meth:`positions` gives them back in the order of the calls,
    which is what an optimiser whose path does not follow from the labels alone replays
    (:class:`~equiformer_calc.workflows.surrogate.SurrogateOptimizer`).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._entries: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            with self.path.open() as fh:
                for line in fh:
                    try:
                        record = json.loads(line)
                        self._entries[record["k"]] = record
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue  # torn write at the end of a killed run
        self.replayed = 0
        self._fh = None

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored results for ``key`` (``energy``, ``forces`` and maybe ``stress``), or ``None``."""
        record = self._entries.get(key)
        if record is None:
            return None
        self.replayed += 1
        results: dict[str, Any] = {"energy": float(record["e"]), "forces": np.array(record["f"], dtype=float)}
        if record.get("s") is not None:
            results["stress"] = np.array(record["s"], dtype=float)
        return results

    def put(self, key: str, results: dict[str, Any], positions: np.ndarray | None = None) -> None:
        """Append one label (and, if given, the ``positions`` it was computed at) and flush it to the
        operating system."""
        record = {
            "k": key,
            "e": float(results["energy"]),
            "f": np.asarray(results["forces"], dtype=float).tolist(),
            "s": None if results.get("stress") is None else np.asarray(results["stress"], dtype=float).tolist(),
        }
        if positions is not None:
            record["x"] = np.asarray(positions, dtype=float).tolist()
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a")
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        self._entries[key] = record

    def positions(self) -> list[np.ndarray]:
        """The positions stored with the labels, in the order they were computed (labels without: skipped).
        Floats round-trip exactly, so each gives back its label's :func:`frame_key` with the same atoms."""
        return [np.array(r["x"], dtype=float) for r in self._entries.values() if r.get("x") is not None]

    def close(self) -> None:
        """Close the file handle (the journal stays readable)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


@dataclass
class LabelStats:
    """Bookkeeping of one task: labeller calls actually paid for, their wall time, replays."""

    calls: int = 0
    seconds: float = 0.0
    replayed: int = 0


class JournaledCalculator(Calculator):
    """ASE calculator that labels with a :class:`Labeller`, timing each call, through an optional journal.

    Every call computes energy, raw forces and, for 3D-periodic cells, stress in one go, so a
    journal entry is complete whatever property was asked first.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, labeller: Labeller, stats: LabelStats, journal: LabelJournal | None = None,
                 record_positions: bool = False) -> None:
        super().__init__()
        self.labeller = labeller
        self.stats = stats
        self.journal = journal
        self.record_positions = bool(record_positions)  # journal each call's positions too (LabelJournal.positions)

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:  # type: ignore[override]
        super().calculate(atoms, properties, system_changes)
        assert self.atoms is not None
        key = frame_key(self.atoms) if self.journal is not None else ""
        cached = self.journal.get(key) if self.journal is not None else None
        if cached is not None:
            self.stats.replayed += 1
            results = cached
        else:
            want = ["energy", "forces"]
            if self.atoms.pbc.all() or "stress" in properties:
                want.append("stress")
            inner = self.labeller.calculator()
            start = time.perf_counter()
            inner.calculate(self.atoms.copy(), want, all_changes)
            self.stats.seconds += time.perf_counter() - start
            self.stats.calls += 1
            results = {
                "energy": float(inner.results["energy"]),
                "forces": np.array(inner.results["forces"], dtype=float),
            }
            if "stress" in want and inner.results.get("stress") is not None:
                results["stress"] = np.array(inner.results["stress"], dtype=float)
            if self.journal is not None:
                self.journal.put(key, results, self.atoms.positions if self.record_positions else None)
        self.results = dict(results, free_energy=results["energy"])
