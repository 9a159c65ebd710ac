"""Screening, step 2: the store. Every relaxed structure is one row of an ASE database, keyed by its
``task_key``; rows are written one by one, each in its own transaction, and never modified.

The database records the model's fingerprint (:func:`model_fingerprint`): resuming with another
model, or a surface of the same name but another geometry, is an error rather than a silent mix. A
task is pending when it has no row (or, with ``retry_failed``, only a failed one).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...calculators.base import model_fingerprint
from ...surfaces import REFERENCE_MOLECULES, REFERENCE_SCHEME, reference_potentials
from .plan import ScreenTask

__all__ = ["model_fingerprint", "ScreenStore"]

log = logging.getLogger(__name__)


def _kv(values: Mapping[str, Any]) -> dict[str, Any]:
    """ASE db key-value pairs: plain bool / int / float / str, None and non-finite floats dropped."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if v is None:
            continue
        if isinstance(v, (bool, np.bool_)):
            out[k] = bool(v)
        elif isinstance(v, (int, np.integer)):
            out[k] = int(v)
        elif isinstance(v, (float, np.floating)):
            if np.isfinite(v):
                out[k] = float(v)
        else:
            out[k] = str(v)
    return out


class ScreenStore:
    """The screening database: ``rows`` (task_key -> row, a ``done`` row preferred when a key appears
    more than once) and ``computed`` / ``skipped`` counts of this run.

    Args:
        db: a path (SQLite, its folder is created) or a database URL for ``ase.db.connect``.
        fingerprint: :func:`model_fingerprint` of the model of this run.
        settings: the relaxation settings (recorded at the first run; a rerun with others is logged).
        common: key-value pairs every row gets.
    """

    def __init__(self, db: str | os.PathLike, fingerprint: dict[str, str], settings: dict[str, Any],
                 common: dict[str, Any]) -> None:
        import ase.db

        self.name = str(db)
        if "://" not in self.name:
            Path(self.name).parent.mkdir(parents=True, exist_ok=True)
        self.database = ase.db.connect(self.name)
        meta = dict(self.database.metadata or {})
        if meta.get("model_hash") and meta["model_hash"] != fingerprint["model_hash"]:
            raise ValueError(
                f"{self.name} holds results of another model ({meta.get('model')}, {meta['model_hash']}); "
                f"this run uses {fingerprint['model']} ({fingerprint['model_hash']}): use another database"
            )
        if meta.get("settings") and meta["settings"] != settings:
            log.warning("%s was started with settings %s; this run uses %s", self.name, meta["settings"], settings)
        if not meta.get("model_hash"):
            meta.update(fingerprint)
            meta.setdefault("settings", settings)
            meta["reference_scheme"] = REFERENCE_SCHEME
            self.database.metadata = meta
        self.common = common
        self.rows: dict[str, Any] = {}
        for row in self.database.select("task_key", include_data=False):
            key = row.get("task_key")
            old = self.rows.get(key)
            if old is None or (old.get("status") != "done" and row.get("status") == "done"):
                self.rows[key] = row
        self.computed = 0
        self.skipped = 0

    def check_surfaces(self, slab_tasks: Sequence[ScreenTask]) -> None:
        """Refuse a surface whose name is in the database with another geometry."""
        for task in slab_tasks:
            row = self.rows.get(task.key)
            ghash = task.info["surface_hash"]
            if row is not None and row.get("surface_hash") not in (None, ghash):
                raise ValueError(
                    f"surface {task.info['surface']!r} in {self.name} has another geometry (hash "
                    f"{row.get('surface_hash')} != {ghash}): use another name or database"
                )

    def pending(self, tasks: Sequence[ScreenTask], retry_failed: bool = False) -> list[ScreenTask]:
        """The tasks without a row (and, with ``retry_failed``, those whose row failed); the others
        count as skipped."""
        todo = []
        for t in tasks:
            row = self.rows.get(t.key)
            if row is None or (retry_failed and row.get("status") != "done"):
                todo.append(t)
            else:
                self.skipped += 1
        return todo

    def write(
        self, task: ScreenTask, result: Any, extra: Callable[[ScreenTask, Any], dict[str, Any]] | None = None
    ) -> int | None:
        """Write the row of a finished relaxation (a
        :class:`~equiformer_calc.workflows.relax.RelaxResult`; ``extra(task, result)`` adds key-value
        pairs to a successful one) and return its id; a task that already has a ``done`` row is not written
        again (None). A retried failed task's old row is deleted once the new one is written."""
        old = self.rows.get(task.key)
        if old is not None and old.get("status") == "done":  # never a second row for a task
            return None
        kv = {
            **self.common, **task.info, "task_key": task.key, "kind": task.kind,
            "status": "done" if result.error is None else "failed",
            "converged": result.converged, "nsteps": result.nsteps,
            "relaxed_energy": result.final_energy if result.error is None else None,
            "initial_energy": result.initial_energy if result.energies else None,
        }
        if extra is not None and result.error is None:
            kv.update(extra(task, result))
        data = {
            "step_energies": np.asarray(result.energies, dtype=float),
            "step_fmax": np.asarray(result.fmax, dtype=float),
            "initial_positions": task.atoms.positions.copy(),
        }
        if result.error:
            data["error"] = result.error
        row_id = self.database.write(result.atoms, key_value_pairs=_kv(kv), data=data)
        if old is not None:  # retry of a failed task: the new row is safely written first
            self.database.delete([old.id])
        self.rows[task.key] = self.database.get(id=row_id)
        self.computed += 1
        return row_id

    def write_row(self, key: str, atoms: Any, kv: dict[str, Any], data: dict[str, Any] | None = None) -> int | None:
        """Write a row that is not a relaxation of this model (the reference's evaluations,
        :mod:`.refine`) under ``key``; a key that already has a row is not written again (None)."""
        if key in self.rows:
            return None
        row_id = self.database.write(atoms, key_value_pairs=_kv({**self.common, **kv, "task_key": key}), data=data or {})
        self.rows[key] = self.database.get(id=row_id)
        return row_id

    def row_error(self, row: Any) -> str:
        """Why a failed row failed (the ``error`` its data recorded)."""
        return str(self.database.get(id=row.id).data.get("error", ""))

    def reference_potentials(self) -> dict[str, float] | None:
        """mu_H, mu_O, mu_C, mu_N from the relaxed gas references in the database, or None when one is
        missing or failed."""
        energy = {m: self.rows[f"gas/{m}"].get("relaxed_energy") for m in REFERENCE_MOLECULES if f"gas/{m}" in self.rows}
        if len(energy) == len(REFERENCE_MOLECULES) and all(v is not None for v in energy.values()):
            return reference_potentials(energy)
        log.warning("a gas-phase reference failed: adsorption energies cannot be computed")
        return None
