"""Screening, step 4 (optional): top-k verification by a reference calculator, after AdsorbML.

Per (surface, adsorbate) group, the ``top_k`` lowest *valid* ML minima (done, no anomaly, finite E_ads;
ranked by ``e_ads``, or with ``rank_by="lcb"`` by the lower confidence bound ``e_ads - kappa *
e_ads_uncertainty``) are evaluated by the reference: a single point at the ML minimum (``mode="sp"``,
AdsorbML's ML+SP) or a relaxation from it (``mode="relax"``, ML+RX; BFGS to ``fmax``). The reference's
adsorption energies use gas references and clean slabs from the same reference, never the model's: in both
modes the reference *relaxes* the gas molecules and clean slabs (from the model's relaxed ones: a fixed
cost per screen, shared by both modes), as AdsorbML takes its slab and gas references from relaxations;
so an ML+SP adsorption energy is an upper bound of the reference's minimum in that basin.

The reference is a labeller name (:func:`~equiformer_calc.data.labellers.resolve_labeller`: ``emt``,
``sevennet``, or ``module:factory`` returning any ASE calculator, e.g. a user's VASP set-up). Every
reference evaluation goes through :class:`~equiformer_calc.data.labellers.JournaledCalculator` with a
journal file per task (``<db>.refine/<hash>.jsonl``): a run killed with SIGKILL loses at most the call in
flight, and the rerun replays the journalled calls before paying for new ones (a BFGS relaxation follows the
same path from the journalled labels; a relaxation steered by the model, whose path depends on the model's
arithmetic, follows the positions its journal also keeps). Finished tasks are rows of the screening database (``kind="reference"``, ``task_key``
``ref-<mode>/<labeller>/<ML task key>``; never modified), so a rerun skips them. Tasks run on the
executor seam (:mod:`equiformer_calc.distributed`: in-process or Dask); this process alone writes.

Cost accounting: every row records ``ref_calls`` (reference evaluations of that task, replayed ones
included: what the task costs whichever run paid for it) and ``ref_seconds`` (the wall time of the calls
paid for by the run that wrote it); :class:`RefineResult` sums them per group and in total (gas + slab +
adsorbate tasks).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

from ...surfaces import ANOMALIES, REFERENCE_MOLECULES, bottom_fixed_mask, check_relaxation, gas_reference_energy, reference_potentials
from .plan import ScreenPlan, ScreenTask
from .store import ScreenStore

__all__ = ["REFINE_MODES", "REFINE_OPTIMIZERS", "RANK_BY", "RESCUABLE", "check_refine_options", "ReferenceTask",
           "ReferenceOutcome", "RefineResult", "run_reference",
           "refine_screen", "select_candidates", "merge_refinement", "REF_COLUMNS", "ReferenceScreen",
           "reference_only_screen"]

#: the summary columns a refinement adds (all contain "ref")
REF_COLUMNS = ("ref_mode", "ref_labeller", "e_ads_ref", "ref_site", "ref_final_site", "ref_calls", "n_ref",
               "ref_anomalous", "ref_ml_site_agrees", "ref_fmax")

log = logging.getLogger(__name__)

REFINE_MODES = ("sp", "relax")
REFINE_OPTIMIZERS = ("bfgs", "surrogate")
RANK_BY = ("energy", "lcb")
#: the ML anomalies a reference relaxation may undo (``refine_screen(anomalous=True)``)
RESCUABLE = ("surface_changed", "intercalated")


@dataclass
class ReferenceTask:
    """One reference evaluation, picklable for the executor: ``key`` (the row's task_key), the starting
    ``atoms`` (constraints kept), the labeller name, ``mode`` ("sp" | "relax"), the relaxation's ``fmax`` /
    ``steps``, the ``journal`` file (None: no journal) and ``surrogate``: the executor's key of the model
    that steers the relaxation (:class:`~equiformer_calc.workflows.surrogate.SurrogateOptimizer`; None:
    plain BFGS on the reference)."""

    key: str
    atoms: Atoms
    labeller: str
    mode: str
    fmax: float = 0.05
    steps: int = 300
    journal: str | None = None
    surrogate: str | None = None


@dataclass
class ReferenceOutcome:
    """The reference's ``energy`` at the end (the final ``atoms``), ``calls`` paid for in this run,
    ``replayed`` journalled calls, ``seconds`` of the paid calls, optimiser ``nsteps`` and ``converged``, and
    ``fmax``: the reference's largest force on a free atom there (eV/A; at a single point, how far the ML
    minimum is from being one of the reference's)."""

    energy: float
    atoms: Atoms
    calls: int
    replayed: int
    seconds: float
    nsteps: int
    converged: bool
    fmax: float = float("nan")


def run_reference(task: ReferenceTask) -> ReferenceOutcome:
    """Evaluate one :class:`ReferenceTask` with its labeller (runs on an executor's worker)."""
    from ase.optimize import BFGS

    from ...data.labellers import JournaledCalculator, LabelJournal, LabelStats, resolve_labeller

    labeller = resolve_labeller(task.labeller)
    stats = LabelStats()
    journal = LabelJournal(task.journal) if task.journal else None
    atoms = task.atoms.copy()
    steered = task.mode == "relax" and task.surrogate is not None
    # a steered path depends on the model's arithmetic: its journal keeps the positions, so a rerun replays it
    atoms.calc = JournaledCalculator(labeller, stats, journal, record_positions=steered)
    try:
        nsteps, converged = 0, True
        if task.mode == "relax":
            if steered:
                from ...distributed.executor import worker_model
                from ..surrogate import SurrogateOptimizer

                opt = SurrogateOptimizer(atoms, worker_model(task.surrogate),
                                         replay=journal.positions() if journal is not None else ())
            else:
                opt = BFGS(atoms, logfile=None)
            converged = bool(opt.run(fmax=task.fmax, steps=task.steps))
            nsteps = int(opt.nsteps)
        energy = float(atoms.get_potential_energy())
        forces = np.asarray(atoms.get_forces(), dtype=float)  # the same call's (constraints applied): no new call
        fmax = float(np.linalg.norm(forces, axis=1).max(initial=0.0))
    finally:
        if journal is not None:
            journal.close()
    final = atoms.copy()
    final.calc = None
    return ReferenceOutcome(energy, final, stats.calls, stats.replayed, stats.seconds, nsteps, converged, fmax)


@dataclass
class RefineResult:
    """``groups``: (surface, adsorbate) -> the reference's best (``e_ads_ref``, ``ref_site``,
    ``ref_final_site``, ``ref_calls``, ``n_ref``, ``ref_anomalous``); ``sites``: ML task key -> that site's
    ``e_ads_ref`` / ``ref_calls`` / ``ref_anomalies``; totals: ``calls`` (all reference evaluations the
    refinement needs, replayed ones included), ``paid_calls`` / ``seconds`` (this run's),
    ``reference_calls`` (gas + slabs), ``computed`` / ``skipped`` tasks, ``errors`` (task key -> error)."""

    mode: str
    labeller: str
    optimizer: str = "bfgs"
    groups: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: int = 0
    paid_calls: int = 0
    seconds: float = 0.0
    reference_calls: int = 0
    computed: int = 0
    skipped: int = 0
    errors: dict[str, str] = field(default_factory=dict)


def check_refine_options(mode: str, optimizer: str, anomalous: bool | None) -> bool:
    """Check a refinement's ``mode`` (:data:`REFINE_MODES`), ``optimizer`` (:data:`REFINE_OPTIMIZERS`) and
    ``anomalous`` (relax mode only) before any work; returns ``anomalous`` resolved (None: on in mode "relax",
    off in "sp"). The messages name :func:`~.screen.screen_adsorbates`'s arguments."""
    if mode not in REFINE_MODES:
        raise ValueError(f"refine_mode must be one of {REFINE_MODES}, got {mode!r}")
    if optimizer not in REFINE_OPTIMIZERS:
        raise ValueError(f"refine_optimizer must be one of {REFINE_OPTIMIZERS}, got {optimizer!r}")
    if anomalous is None:
        anomalous = mode == "relax"
    if anomalous and mode != "relax":
        raise ValueError("refine_anomalous needs refine_mode='relax' (a single point at an anomalous geometry "
                         "is anomalous too)")
    return bool(anomalous)


def select_candidates(sites: Sequence[dict[str, Any]], top_k: int, rank_by: str = "energy",
                      kappa: float = 1.0, anomalous: bool = False) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Per (surface, adsorbate): the ``top_k`` lowest valid site rows (done, no anomaly, finite
    ``e_ads``), by ``e_ads`` or (``rank_by="lcb"``) by ``e_ads - kappa * e_ads_uncertainty``.

    ``anomalous=True`` adds, after them, every ML minimum flagged only :data:`RESCUABLE` (the surface
    reconstructed or the adsorbate pushed into it: the student's typical hole) that ranks below the K-th
    valid one (all of them when a group has fewer than K valid): a reference relaxation from there may
    climb back into the basin the student overshot, and the reference's own anomaly check decides
    whether it counts. Desorbed and dissociated minima are never rescued."""
    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by must be one of {RANK_BY}, got {rank_by!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    rescued: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in sites:
        groups.setdefault((r["surface"], r["adsorbate"]), [])
        if r["status"] != "done" or not np.isfinite(r["e_ads"]):
            continue
        flags = {k for k in ANOMALIES if r.get(k, False)}
        if not flags:
            groups[(r["surface"], r["adsorbate"])].append(r)
        elif anomalous and flags <= set(RESCUABLE):
            rescued.setdefault((r["surface"], r["adsorbate"]), []).append(r)

    def score(r: dict[str, Any]) -> float:
        if rank_by == "energy":
            return float(r["e_ads"])
        u = r.get("e_ads_uncertainty", float("nan"))
        if not np.isfinite(u):
            raise ValueError("rank_by='lcb' needs e_ads_uncertainty: the model has no committee (uncertainty off)")
        return float(r["e_ads"]) - kappa * float(u)

    chosen = {g: sorted(rows, key=score)[:top_k] for g, rows in groups.items()}
    for g, rows in rescued.items():
        bar = score(chosen[g][-1]) if len(chosen[g]) >= top_k else float("inf")
        chosen[g] += sorted((r for r in rows if score(r) < bar), key=score)
    return chosen


def _journal(folder: Path | None, key: str) -> str | None:
    if folder is None:
        return None
    return str(folder / (hashlib.sha1(key.encode()).hexdigest()[:20] + ".jsonl"))


def _ref_key(mode: str, labeller: str, key: str, surrogate: bool = False) -> str:
    """The row key of a reference task; a relaxation steered by the model has its own (its path differs)."""
    return f"ref-{mode}{'-surrogate' if surrogate and mode == 'relax' else ''}/{labeller}/{key}"


def refine_screen(
    store: ScreenStore,
    plan: ScreenPlan,
    sites: Sequence[dict[str, Any]],
    reference: str,
    top_k: int = 3,
    mode: str = "sp",
    rank_by: str = "energy",
    kappa: float = 1.0,
    fmax: float = 0.05,
    steps: int = 300,
    fix_bottom: int | None = 2,
    executor: Any = None,
    journal_dir: str | os.PathLike | None = None,
    move_tolerance: float = 0.5,
    optimizer: str | None = None,
    surrogate: Any = None,
    anomalous: bool | None = None,
) -> RefineResult:
    """Verify the ``top_k`` ML minima of every group of a finished screen with the ``reference``
    (see the module docstring). ``sites``: the screen's site rows (:func:`~.summary.site_rows`);
    ``journal_dir``: where the per-task journals go (default ``<db>.refine`` for a file database;
    required for a database URL). ``optimizer``: how the reference relaxes (gas molecules, clean slabs and, in
    mode "relax", the candidates): "bfgs" (BFGS on the reference alone) or "surrogate" (steered by
    ``surrogate``, the screen's model: :class:`~equiformer_calc.workflows.surrogate.SurrogateOptimizer`;
    the same convergence test on the reference's forces, in fewer reference calls); None: "surrogate" when a
    ``surrogate`` is given, else "bfgs". ``anomalous`` (mode "relax" only; None: on in mode "relax"): also
    relax, from the model's minimum, the model's reconstructed or intercalated minima that rank below the
    K-th valid one (:func:`select_candidates`); they cost reference calls beyond K."""
    from ...data.labellers import resolve_labeller
    from ...distributed.executor import SerialExecutor

    if optimizer is None:
        optimizer = "surrogate" if surrogate is not None else "bfgs"
    anomalous = check_refine_options(mode, optimizer, anomalous)
    if optimizer == "surrogate" and surrogate is None:
        raise ValueError("refine optimizer 'surrogate' needs the model that steers it (surrogate=...)")
    labeller = resolve_labeller(reference)  # a bad name fails here, before any work
    symbols = {s for t in plan.gas + plan.slabs + plan.adsorbates for s in t.atoms.get_chemical_symbols()}
    labeller.check_elements(symbols)
    name = labeller.name
    if journal_dir is None:
        if "://" in store.name:
            raise ValueError("refining a screen in a database URL needs journal_dir (a folder for the journals)")
        journal_dir = store.name + ".refine"
    folder = Path(journal_dir)
    folder.mkdir(parents=True, exist_ok=True)
    candidates = select_candidates(sites, top_k, rank_by, kappa, anomalous)
    executor = executor if executor is not None else SerialExecutor()
    steer = executor.register_model(surrogate) if optimizer == "surrogate" else None
    ref = _Refinement(store, RefineResult(mode, name, optimizer), executor, reference, mode, fmax, steps, fix_bottom,
                      folder, steer)
    mu = _refine_references(ref, plan)  # 1. gas molecules and clean slabs
    by_site = {(x.info["surface"], x.info["adsorbate"], x.info["site"]): x for x in plan.adsorbates}
    _refine_adsorbates(ref, plan, candidates, by_site, mu, move_tolerance)  # 2. the top-k of every group
    _best_per_group(ref, candidates, by_site)  # 3. the reference's best per group
    result = ref.result
    result.calls = result.reference_calls + sum(g["ref_calls"] for g in result.groups.values())
    log.info("reference %s (%s, top %d by %s): %d reference calls in all (%d paid by this run, %.1f s), "
             "%d for gas + slabs", name, mode, top_k, rank_by, result.calls, result.paid_calls, result.seconds,
             result.reference_calls)
    return result


@dataclass
class _Refinement:
    """What every phase of :func:`refine_screen` shares: the store, the result being filled, the executor
    and the reference's settings; its methods make, run and record the reference tasks."""

    store: ScreenStore
    result: RefineResult
    executor: Any
    reference: str
    mode: str
    fmax: float
    steps: int
    fix_bottom: int | None
    folder: Path
    surrogate: str | None = None

    @property
    def name(self) -> str:
        return self.result.labeller

    def ml_atoms(self, key: str, n_slab: int | None) -> Atoms | None:
        """The model's finished structure of task ``key`` (bottom layers of its slab fixed), None if missing."""
        row = self.store.rows.get(key)
        if row is None or row.get("status") != "done":
            return None
        atoms = row.toatoms()
        atoms.calc = None
        if n_slab is not None and self.fix_bottom:
            fixed = np.zeros(len(atoms), dtype=bool)
            fixed[:n_slab] = bottom_fixed_mask(atoms[:n_slab], self.fix_bottom)
            atoms.set_constraint(FixAtoms(mask=fixed))
        return atoms

    def task_for(self, key: str, atoms: Atoms, how: str | None = None) -> ReferenceTask:
        """The reference task of ML task ``key`` (``how``: "sp" or "relax", default: the refine mode)."""
        how = self.mode if how is None else how
        rkey = self.key(how, key)
        return ReferenceTask(rkey, atoms, self.reference, how, self.fmax, self.steps, _journal(self.folder, rkey),
                             self.surrogate if how == "relax" else None)

    def key(self, how: str, key: str) -> str:
        """The row key of the reference's ``how`` ("sp" | "relax") of ML task ``key``."""
        return _ref_key(how, self.name, key, self.surrogate is not None)

    def run(self, tasks: list[tuple[ReferenceTask, dict[str, Any], Any]], what: str) -> None:
        """Run the tasks without a row on the executor; write each row as it completes (``extra(outcome)``
        adds key-value pairs)."""
        store, result, name = self.store, self.result, self.name
        todo = [(t, info, extra) for t, info, extra in tasks if t.key not in store.rows]
        result.skipped += len(tasks) - len(todo)
        if not todo:
            return
        log.info("reference %s (%s): %d %s (%d already in %s)", name, self.mode, len(todo), what,
                 len(tasks) - len(todo), store.name)
        for outcome in self.executor.map(run_reference, [t for t, _, _ in todo], name=f"refine-{what.split()[0]}"):
            task, info, extra = todo[outcome.index]
            if outcome.error is not None:
                result.errors[task.key] = outcome.error
                continue
            out: ReferenceOutcome = outcome.value
            kv = {**info, "task_key": task.key, "kind": "reference", "status": "done", "ref_mode": task.mode,
                  "ref_labeller": name, "ref_energy": out.energy, "ref_calls": out.calls + out.replayed,
                  "ref_seconds": out.seconds, "ref_nsteps": out.nsteps, "ref_converged": out.converged,
                  "ref_fmax": out.fmax,
                  "ref_optimizer": "surrogate" if task.surrogate is not None else ("bfgs" if task.mode == "relax" else "")}
            if extra is not None:
                kv.update(extra(out))
            final = out.atoms.copy()
            final.calc = SinglePointCalculator(final, energy=out.energy)
            store.write_row(task.key, final, kv, {"start_positions": task.atoms.positions.copy()})
            result.computed += 1
            result.paid_calls += out.calls
            result.seconds += out.seconds


def _refine_references(ref: _Refinement, plan: ScreenPlan) -> dict[str, float]:
    """Phase 1: gas molecules and clean slabs relaxed by the reference from the model's relaxed ones (both
    modes); returns the reference's chemical potentials (an error when a gas-phase molecule failed)."""
    store, result, name = ref.store, ref.result, ref.name
    refs: list[tuple[ReferenceTask, dict[str, Any], Any]] = []
    for t in plan.gas + plan.slabs:
        atoms = ref.ml_atoms(t.key, len(t.atoms) if t.kind == "slab" else None)
        if atoms is None:
            result.errors[t.key] = "the model's relaxation of this reference structure is missing or failed"
            continue
        refs.append((ref.task_for(t.key, atoms, "relax"), {"ml_task_key": t.key, **_plain(t.info)}, None))
    ref.run(refs, "reference structures")
    gas = {m: store.rows.get(ref.key("relax", f"gas/{m}")) for m in REFERENCE_MOLECULES}
    if any(r is None for r in gas.values()):
        raise RuntimeError(f"the reference {name} failed on a gas-phase molecule: {result.errors}")
    mu = reference_potentials({m: r.get("ref_energy") for m, r in gas.items()})
    result.reference_calls = sum(int(store.rows[t.key].get("ref_calls", 0)) for t, _, _ in refs if t.key in store.rows)
    return mu


def _refine_adsorbates(ref: _Refinement, plan: ScreenPlan, candidates: dict[tuple[str, str], list[dict[str, Any]]],
                       by_site: dict[tuple[str, str, str], Any], mu: dict[str, float], move_tolerance: float) -> None:
    """Phase 2: the reference on the top-k adsorbate systems of every group."""
    tasks: list[tuple[ReferenceTask, dict[str, Any], Any]] = []
    for rows in candidates.values():
        for r in rows:
            t = by_site.get((r["surface"], r["adsorbate"], r["site"]))
            if t is None:
                continue
            atoms = ref.ml_atoms(t.key, t.n_slab)
            if atoms is None:
                continue
            slab_ref = ref.store.rows.get(ref.key("relax", f"slab/{t.info['surface']}"))
            tasks.append((ref.task_for(t.key, atoms), {"ml_task_key": t.key, **_plain(t.info), "e_ads_ml": r["e_ads"]},
                          _adsorbate_extra(t, slab_ref, mu, ref.mode, move_tolerance, ref.fix_bottom,
                                           [(x.kind, x.position) for x in plan.all_sites.get(t.info["surface"], [])])))
    ref.run(tasks, "adsorbate systems")


def _best_per_group(ref: _Refinement, candidates: dict[tuple[str, str], list[dict[str, Any]]],
                    by_site: dict[tuple[str, str, str], Any]) -> None:
    """Phase 3 (bookkeeping): per site and per group, the reference's numbers; a group's best is its lowest
    finite adsorption energy among the sites without anomalies."""
    result = ref.result
    for (surface, ads), rows in candidates.items():
        group = {"e_ads_ref": float("nan"), "ref_site": "", "ref_final_site": "", "ref_calls": 0, "n_ref": 0,
                 "ref_anomalous": 0, "ref_fmax": float("nan")}
        best = None
        for r in rows:
            t = by_site.get((surface, ads, r["site"]))
            row = ref.store.rows.get(ref.key(ref.mode, t.key)) if t is not None else None
            if row is None:
                continue
            group["n_ref"] += 1
            group["ref_calls"] += int(row.get("ref_calls", 0))
            anomalies = row.get("ref_anomalies", "")
            e = row.get("e_ads_ref", float("nan"))
            fmax = float(row.get("ref_fmax", float("nan")))  # rows of an older version have none
            result.sites[t.key] = {"e_ads_ref": e, "ref_calls": int(row.get("ref_calls", 0)), "ref_anomalies": anomalies,
                                   "ref_fmax": fmax}
            if anomalies:
                group["ref_anomalous"] += 1
                continue
            if np.isfinite(e) and (best is None or e < best[0]):
                best = (e, r["site"], row.get("final_site_ref", ""), fmax)
        if best is not None:
            group.update(e_ads_ref=best[0], ref_site=best[1], ref_final_site=best[2], ref_fmax=best[3])
        result.groups[(surface, ads)] = group


def _plain(info: dict[str, Any]) -> dict[str, Any]:
    """An ML task's descriptive key-value pairs, minus the ones a reference row sets itself."""
    return {k: v for k, v in info.items() if k not in ("task_key", "kind", "status")}


def _adsorbate_extra(task: ScreenTask, slab_ref: Any, mu: dict[str, float], mode: str, move_tolerance: float,
                     fix_bottom: int | None, offered: Sequence[tuple[str, Any]] = ()):
    """The key-value pairs of a reference adsorbate row: ``e_ads_ref`` from the reference's own slab and
    gas references and, after a relaxation, the anomaly flags of the reference's minimum."""

    def extra(out: ReferenceOutcome) -> dict[str, Any]:
        kv: dict[str, Any] = {}
        if slab_ref is not None:
            symbols = out.atoms.get_chemical_symbols()[task.n_slab :]
            kv["e_ads_ref"] = out.energy - float(slab_ref.get("ref_energy")) - gas_reference_energy(symbols, mu)
        if mode == "relax":
            mask = np.arange(len(out.atoms)) >= task.n_slab
            frozen = np.zeros(len(mask), dtype=bool)
            frozen[: task.n_slab] = bottom_fixed_mask(task.atoms[: task.n_slab], fix_bottom)
            relaxed_slab = slab_ref.toatoms() if slab_ref is not None else None
            flags = check_relaxation(out.atoms, mask, task.atoms, task.site.position if task.site else None, offered,
                                     move_tolerance=move_tolerance, relaxed_slab=relaxed_slab, frozen=frozen)
            kv.update({k: flags[k] for k in ANOMALIES}, final_site_ref=flags["final_site"] or "")
            kv["ref_anomalies"] = ",".join(flags["anomalies"])
        else:
            kv["ref_anomalies"] = ""
        return kv

    return extra


def merge_refinement(refined: RefineResult, plan: ScreenPlan, sites: list[dict[str, Any]],
                     summary: list[dict[str, Any]]) -> None:
    """Add the reference's numbers to the screen's tables, in place: per site ``e_ads_ref`` /
    ``ref_calls`` / ``ref_anomalies`` / ``ref_fmax`` (NaN / 0 / "" / NaN where not refined); per group the
    :data:`REF_COLUMNS` (``ref_ml_site_agrees``: the reference's best site is the model's; ``ref_fmax``: the
    reference's largest free-atom force at that best, eV/A: after a single point, how far the ML minimum is
    from being the reference's; after a relaxation, below ``fmax`` when it converged)."""
    by_site = {(t.info["surface"], t.info["adsorbate"], t.info["site"]): t.key for t in plan.adsorbates}
    for r in sites:
        got = refined.sites.get(by_site.get((r["surface"], r["adsorbate"], r["site"]), ""), {})
        r["e_ads_ref"] = got.get("e_ads_ref", float("nan"))
        r["ref_calls"] = got.get("ref_calls", 0)
        r["ref_anomalies"] = got.get("ref_anomalies", "")
        r["ref_fmax"] = got.get("ref_fmax", float("nan"))
    for s in summary:
        g = refined.groups.get((s["surface"], s["adsorbate"]), {})
        s.update(ref_mode=refined.mode, ref_labeller=refined.labeller, e_ads_ref=g.get("e_ads_ref", float("nan")),
                 ref_site=g.get("ref_site", ""), ref_final_site=g.get("ref_final_site", ""),
                 ref_calls=g.get("ref_calls", 0), n_ref=g.get("n_ref", 0), ref_anomalous=g.get("ref_anomalous", 0),
                 ref_ml_site_agrees=bool(g.get("ref_site")) and g.get("ref_site") == s["site"],
                 ref_fmax=g.get("ref_fmax", float("nan")))


@dataclass
class ReferenceScreen:
    """A reference-only screen (what the verification is compared with): per (surface, adsorbate) group
    ``best`` (lowest E_ads among relaxations without an anomaly; None when all are anomalous), its ``site``
    and every site's ``e_ads`` / ``calls`` / ``anomalies``; ``calls`` (all reference calls, gas molecules and
    slabs included) and ``seconds`` (wall time)."""

    groups: dict[tuple[str, str], dict[str, Any]]
    calls: int
    seconds: float


def reference_only_screen(slabs: Any, adsorbates: Sequence[Any], reference: str, site_kinds: Sequence[str] | None = None,
                          fmax: float = 0.05, steps: int = 300, fix_bottom: int | None = 2,
                          executor: Any = None) -> ReferenceScreen:
    """Relax every gas molecule, clean slab and (surface, adsorbate, site) of a screen with the ``reference``
    alone (BFGS from the initial structures; same plan, sites, fixed layers and anomaly checks as the
    model's screen), counting its calls: the cost the top-k verification is measured against. Nothing is
    written (no database, no journal)."""
    import time

    from ...data.labellers import resolve_labeller
    from ...distributed.executor import SerialExecutor
    from .plan import adsorbate_templates, normalise_surfaces, plan_screen

    resolve_labeller(reference)
    plan = plan_screen(normalise_surfaces(slabs), adsorbate_templates(adsorbates, gas_referenced=True), site_kinds)
    executor = executor if executor is not None else SerialExecutor()
    start = time.perf_counter()

    def constrained(t: ScreenTask, n_slab: int | None) -> Atoms:
        atoms = t.atoms.copy()
        if n_slab and fix_bottom:
            fixed = np.zeros(len(atoms), dtype=bool)
            fixed[:n_slab] = bottom_fixed_mask(atoms[:n_slab], fix_bottom)
            atoms.set_constraint(FixAtoms(mask=fixed))
        return atoms

    tasks = plan.gas + plan.slabs + plan.adsorbates
    items = [ReferenceTask(t.key, constrained(t, None if t.kind == "gas" else (len(t.atoms) if t.kind == "slab" else t.n_slab)),
                           reference, "relax", fmax, steps) for t in tasks]
    outs: dict[str, ReferenceOutcome] = {}
    for outcome in executor.map(run_reference, items, name="reference-only"):
        if outcome.error is not None:
            raise RuntimeError(f"the reference failed on {tasks[outcome.index].key}: {outcome.error}")
        outs[tasks[outcome.index].key] = outcome.value
    mu = reference_potentials({t.info["molecule"]: outs[t.key].energy for t in plan.gas})
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for t in plan.adsorbates:
        out, slab = outs[t.key], outs[f"slab/{t.info['surface']}"]
        mask = np.arange(len(out.atoms)) >= t.n_slab
        frozen = np.zeros(len(mask), dtype=bool)
        frozen[: t.n_slab] = bottom_fixed_mask(t.atoms[: t.n_slab], fix_bottom)
        flags = check_relaxation(out.atoms, mask, t.atoms, t.site.position if t.site else None,
                                 relaxed_slab=slab.atoms, frozen=frozen)
        e_ads = out.energy - slab.energy - gas_reference_energy(out.atoms.get_chemical_symbols()[t.n_slab :], mu)
        g = groups.setdefault((t.info["surface"], t.info["adsorbate"]), {"best": None, "site": "", "sites": {}})
        g["sites"][t.info["site"]] = {"e_ads": e_ads, "calls": out.calls, "anomalies": flags["anomalies"]}
        if not flags["anomalies"] and (g["best"] is None or e_ads < g["best"]):
            g["best"], g["site"] = e_ads, t.info["site"]
    return ReferenceScreen(groups, sum(o.calls for o in outs.values()), time.perf_counter() - start)
