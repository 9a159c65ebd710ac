"""The hole check: does a model keep the teacher's minima as minima?

A "hole" is a region the student puts far too low in energy, so that its relaxations fall into it
(issue 23: surface atoms sliding 2-4 A into reconstructions the student puts 9-16 eV below the
teacher). For every relaxation reference of a datagen folder (``relax_relaxed.extxyz[.xz]``: the
teacher's relaxed structures, ``relax_tasks.json``), the model relaxes starting *at the teacher's
minimum* (BFGS, fmax 0.05 eV/A, at most 500 steps, the reference's fixed atoms held) and the task
**fails** when

* ``max_displacement > 0.5 A``: the largest minimum-image displacement of a free atom between the
  teacher's minimum and the model's end point (the student found a different minimum), or
* ``drop < -0.5 eV``, with ``drop = [E_model(end) - E_model(start)] - [E_teacher(end) - E_teacher(start)]``:
  how much further the model says it went downhill than the teacher says it did over the same path
  (``E_teacher(end)`` is a teacher single point at the model's end point; ``E_teacher(start)`` the
  reference's relaxed energy), or
* the relaxation fails (``error``).

``benchmarks/hole_check.py`` runs it and writes the failing tasks into a model card; the CI test
``tests/workflows/test_hole_check.py`` fails on any failing task that the card does not list.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from ..surfaces import constrain_held
from ._common import resolve_calculator
from .active_learning import max_displacement, read_frames

__all__ = ["hole_check", "MAX_MOVE", "MAX_DROP", "DEFINITION", "explain"]

log = logging.getLogger(__name__)

#: thresholds of a hole
MAX_MOVE = 0.5  # A
MAX_DROP = 0.5  # eV
DEFINITION = (
    "student relaxation (BFGS, fmax 0.05 eV/A, <= 500 steps, the reference's fixed atoms held) started at the "
    "teacher's relaxed structure of each relaxation reference; it fails when max_displacement > 0.5 A (largest "
    "minimum-image displacement of a free atom, start to end) or drop < -0.5 eV, drop = [E_student(end) - "
    "E_student(start)] - [E_teacher(end) - E_teacher(start)] with E_teacher(end) a teacher single point at the "
    "student's end point, or when the relaxation fails"
)


def _files(data_dir: Path) -> tuple[Path, Path]:
    tasks = data_dir / "relax_tasks.json"
    relaxed = next((p for p in (data_dir / "relax_relaxed.extxyz.xz", data_dir / "relax_relaxed.extxyz") if p.is_file()),
                   None)
    if not tasks.is_file() or relaxed is None:
        raise FileNotFoundError(f"{data_dir} has no relax_tasks.json and relax_relaxed.extxyz(.xz): give a datagen "
                                "folder with relaxation references")
    return tasks, relaxed


def explain(task: dict[str, Any]) -> str:
    """A one-line measured description of a failing task (what moved, by how much, the energy gap),
    naming the teacher's known failure where it applies (SevenNet-0 puts O and OH on Ni(111) 2.5 A above
    the surface)."""
    parts = []
    if task.get("error"):
        parts.append(f"relaxation failed ({task['error']})")
    else:
        parts.append(f"atom {task['moved_atom']} ({task['moved_element']}, {task['moved_role']}) moved "
                     f"{task['max_displacement']:.2f} A; the student ends {task['drop']:+.2f} eV relative to the "
                     "teacher's verdict on the same path")
    if task["metal"] == "Ni" and task["adsorbate"] in ("O", "OH") and task["facet"] == "fcc111":
        parts.append("teacher's known failure: SevenNet-0 places O/OH on Ni(111) ~2.5 A above the surface, so its "
                     "'minimum' is not one a good student keeps")
    return "; ".join(parts)


def hole_check(
    model: Any,
    data_dir: str | os.PathLike,
    labeller: str | None = None,
    max_move: float = MAX_MOVE,
    max_drop: float = MAX_DROP,
    fmax: float = 0.05,
    steps: int = 500,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the hole check of ``model`` (checkpoint path / shipped name, any ASE calculator, or what
    else :func:`~equiformer_calc.calculators.local.resolve_calculator` takes) on the
    relaxation references of ``data_dir``; ``labeller``: the teacher (default: the one recorded in the
    frames). Returns ``{"summary", "tasks"}`` (per task: displacement, energies, ``drop``, ``fails``)."""
    from ..data.labellers import JournaledCalculator, LabelStats, resolve_labeller
    from .adsorbml import _relax_all

    data_dir = Path(data_dir)
    tasks_path, relaxed_path = _files(data_dir)
    records = json.loads(tasks_path.read_text())
    reference = read_frames(relaxed_path)
    if len(records) != len(reference):
        raise ValueError(f"{data_dir}: {len(records)} tasks but {len(reference)} relaxed frames")
    labeller = labeller or str(reference[0].info.get("labeller", "emt"))
    teacher = resolve_labeller(labeller)
    calc = resolve_calculator(model)
    if isinstance(model, (str, os.PathLike)):
        name = str(model)
    else:  # a calculator (EMT: its class), a predictor or settings (the checkpoint)
        name = getattr(calc, "parameters", {}).get("checkpoint") or type(calc).__name__
    t0 = time.perf_counter()
    starts = [constrain_held(a) for a in reference]
    results = _relax_all(starts, calc, "BFGS", fmax, steps, progress)
    teacher_calc = JournaledCalculator(teacher, LabelStats())
    tasks = []
    for rec, ref, start, res in zip(records, reference, starts, results, strict=True):
        task: dict[str, Any] = {k: rec[k] for k in ("task_id", "metal", "facet", "adsorbate", "site")}
        task["error"] = res.error
        if res.error is None:
            end: Atoms = res.atoms
            free = ~(start.arrays["fixed"].astype(bool)) if "fixed" in start.arrays else np.ones(len(start), bool)
            d = np.zeros(len(start))
            from ase.geometry import find_mic

            _, lengths = find_mic(end.positions - start.positions, start.cell, start.pbc)
            d[free] = lengths[free]
            k = int(np.argmax(d))
            work = end.copy()
            work.calc = teacher_calc
            e_t_end = float(work.get_potential_energy())
            e_t_start = float(rec["relaxed_energy"])
            drop = (res.final_energy - res.initial_energy) - (e_t_end - e_t_start)
            task.update(
                max_displacement=max_displacement(start, end), moved_atom=k, moved_element=start[k].symbol,
                moved_role="adsorbate" if start.get_tags()[k] == 2 else "surface",
                e_student_start=res.initial_energy, e_student_end=res.final_energy, e_teacher_start=e_t_start,
                e_teacher_end=e_t_end, drop=float(drop), steps=res.nsteps, converged=res.converged,
            )
            reasons = [r for r, bad in (("moved", task["max_displacement"] > max_move), ("below_teacher", drop < -max_drop))
                       if bad]
        else:
            reasons = ["failed"]
        task["reasons"] = reasons
        task["fails"] = bool(reasons)
        if task["fails"]:
            task["explanation"] = explain(task)
        tasks.append(task)
    failing = [t for t in tasks if t["fails"]]
    summary = {
        "checkpoint": name,
        "data_dir": str(data_dir),
        "teacher": teacher.name,
        "definition": DEFINITION,
        "max_move_A": max_move,
        "max_drop_eV": max_drop,
        "n_tasks": len(tasks),
        "n_failing": len(failing),
        "failing": [t["task_id"] for t in failing],
        "n_moved": sum("moved" in t["reasons"] for t in tasks),
        "n_below_teacher": sum("below_teacher" in t["reasons"] for t in tasks),
        "median_displacement_A": float(np.median([t["max_displacement"] for t in tasks if t["error"] is None])),
        "wall_s": time.perf_counter() - t0,
    }
    return {"summary": summary, "tasks": tasks}
