"""Screening by relaxation: :func:`screen_adsorbates` runs the plan, relaxes what the store lacks (here
with :func:`~equiformer_calc.workflows.batch.relax_batch`, or in chunks on an executor) and summarises."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...surfaces import (
    REFERENCE_MOLECULES, Site, bottom_fixed_mask, check_relaxation, fixed_mask, gas_reference_energy,
    reference_potentials,
)
from .._common import resolve_calculator
from ..batch import RelaxChunk, relax_batch, relax_chunk
from ..relax import OPTIMIZERS, RelaxResult
from .plan import ScreenTask, adsorbate_templates, check_supported, normalise_surfaces, plan_screen
from .store import ScreenStore, model_fingerprint
from .summary import site_rows, summarise, write_screen_outputs

__all__ = ["ScreenResult", "screen_adsorbates"]

log = logging.getLogger(__name__)

Extra = Callable[[ScreenTask, RelaxResult], dict[str, Any]]


@dataclass
class ScreenResult:
    """summary: one dict per (surface, adsorbate) with the minimum adsorption energy; sites: one
    dict per (surface, adsorbate, site); files written; counts of relaxations run and skipped."""

    summary: list[dict[str, Any]]
    sites: list[dict[str, Any]]
    db: str
    files: dict[str, Path] = field(default_factory=dict)
    computed: int = 0
    skipped: int = 0
    #: task_key -> why it has no result: a structure the model refused or whose relaxation
    #: broke (written as a ``failed`` row), or a task the executor could not run (not written:
    #: a rerun tries it again)
    errors: dict[str, str] = field(default_factory=dict)
    #: the top-k verification (``refine=``): a :class:`~.refine.RefineResult` with the reference's
    #: best per group and the reference calls it cost; None without ``refine``
    refine: Any = None


@dataclass
class _Relaxer:
    """Relaxes the pending tasks of a phase and writes each row as its relaxation finishes; ``errors``
    collects task_key -> error."""

    calc: Any
    store: ScreenStore
    fmax: float
    steps: int
    optimizer: str
    fix_bottom: int | None
    batch_size: int
    progress: bool
    retry_failed: bool
    callback: Callable[[str, int], None] | None
    executor: Any = None
    chunk_size: int = 16
    errors: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.executor is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        self.remote_model = self.executor.register_model(self.calc) if self.executor is not None else None

    def _write(self, task: ScreenTask, result: RelaxResult, extra: Extra | None) -> None:
        row_id = self.store.write(task, result, extra)
        if row_id is None:
            return
        if result.error is not None:
            self.errors[task.key] = result.error
        if self.callback is not None:
            self.callback(task.key, row_id)

    def run(self, tasks: list[ScreenTask], extra: Extra | None, what: str) -> None:
        todo = self.store.pending(tasks, self.retry_failed)
        if not todo:
            return
        log.info("relaxing %d %s (%d already in %s)", len(todo), what, len(tasks) - len(todo), self.store.name)
        fix = None if todo[0].kind == "gas" else self.fix_bottom
        if self.executor is None:
            relax_batch(
                [t.atoms for t in todo], fmax=self.fmax, steps=self.steps, optimizer=self.optimizer,
                calculator=self.calc, fix_bottom=fix, max_concurrent=self.batch_size,
                callback=lambda k, result: self._write(todo[k], result, extra), progress=self.progress,
                invalid="record",
            )
            return
        # fan-out: chunks of tasks relax on the executor's workers; rows are written here
        starts = range(0, len(todo), self.chunk_size)
        chunks = (
            RelaxChunk(self.remote_model, [t.atoms for t in todo[i : i + self.chunk_size]], fmax=self.fmax,
                       steps=self.steps, optimizer=self.optimizer, fix_bottom=fix, max_concurrent=self.batch_size)
            for i in starts
        )
        for outcome in self.executor.map(relax_chunk, chunks, name=f"screen-{todo[0].kind}"):
            first = starts[outcome.index]
            if outcome.error is not None:
                for task in todo[first : first + self.chunk_size]:
                    self.errors[task.key] = f"task failed: {outcome.error}"
                continue
            for j, result in enumerate(outcome.value):
                self._write(todo[first + j], result, extra)


def _adsorption_checks(
    store: ScreenStore, all_sites: dict[str, list[Site]], mu: dict[str, float] | None, move_tolerance: float,
    fix_bottom: int | None = None, calc: Any = None,
) -> Extra:
    """The key-value pairs of a relaxed adsorbate system: the anomaly flags (AdsorbML's four, against its
    initial site and the relaxed clean slab; ``anomalies`` is their comma-joined names, empty when none),
    the clean slab's energy and, with gas references, the adsorption energy ``e_ads`` and (a model with a
    committee) its spread ``e_ads_uncertainty``."""
    members = _CommitteeEnergies(calc, store)

    def extra(task: ScreenTask, result: RelaxResult) -> dict[str, Any]:
        assert task.site is not None
        slab_row = store.rows.get(f"slab/{task.info['surface']}")
        e_slab = slab_row.get("relaxed_energy") if slab_row is not None else None
        relaxed_slab = slab_row.toatoms() if slab_row is not None and slab_row.get("status") == "done" else None
        if relaxed_slab is not None and len(relaxed_slab) != task.n_slab:
            relaxed_slab = None
        mask = np.arange(len(result.atoms)) >= task.n_slab
        # the atoms that may not relax: the slab's own constraints and the fix_bottom layers
        frozen = np.zeros(len(mask), dtype=bool)
        frozen[: task.n_slab] = fixed_mask(task.atoms)[: task.n_slab] | bottom_fixed_mask(
            task.atoms[: task.n_slab], fix_bottom)
        offered = [(x.kind, x.position) for x in all_sites[task.info["surface"]]]
        checks = check_relaxation(result.atoms, mask, task.atoms, task.site.position, offered, move_tolerance,
                                  relaxed_slab=relaxed_slab, frozen=frozen)
        out: dict[str, Any] = {**{k: v for k, v in checks.items() if k != "anomalies"}, "slab_energy": e_slab,
                               "anomalies": ",".join(checks["anomalies"])}
        if e_slab is not None and mu is not None:
            symbols = result.atoms.get_chemical_symbols()[task.n_slab :]
            out["e_ads"] = result.final_energy - e_slab - gas_reference_energy(symbols, mu)
            out["reference"] = "OC20"
            spread = members.e_ads_spread(result.atoms, f"slab/{task.info['surface']}", symbols)
            if spread is not None:
                out["e_ads_uncertainty"] = spread
        return out

    return extra


class _CommitteeEnergies:
    """The committee's energies (``energy_committee``, one per member) of final structures, for the
    spread of adsorption energies: a member's E_ads is its own system minus its own slab and gas
    references, so the members' shared errors cancel. One energy-only model call per structure (the
    references' once, cached). Inactive (None everywhere) when the model has no committee."""

    def __init__(self, calc: Any, store: ScreenStore) -> None:
        predictor = getattr(calc, "predictor", None)
        self.calc = calc if predictor is not None and getattr(predictor, "committee", None) is not None else None
        self.store = store
        self.cache: dict[str, np.ndarray | None] = {}

    def energies(self, atoms: Any) -> np.ndarray:
        return np.asarray(self.calc.predict([atoms], ["energy"])[0]["energy_committee"], dtype=float)

    def of_row(self, key: str) -> np.ndarray | None:
        if key not in self.cache:
            row = self.store.rows.get(key)
            self.cache[key] = self.energies(row.toatoms()) if row is not None and row.get("status") == "done" else None
        return self.cache[key]

    def e_ads_spread(self, atoms: Any, slab_key: str, symbols: Sequence[str]) -> float | None:
        if self.calc is None:
            return None
        slab = self.of_row(slab_key)
        gas = {m: self.of_row(f"gas/{m}") for m in REFERENCE_MOLECULES}
        if slab is None or any(v is None for v in gas.values()):
            return None
        system = self.energies(atoms)
        e_ads = [system[m] - slab[m] - gas_reference_energy(symbols, reference_potentials({k: v[m] for k, v in gas.items()}))
                 for m in range(len(system))]
        return float(np.std(e_ads))


def screen_adsorbates(
    slabs: Any,
    adsorbates: Sequence[Any],
    db: str | os.PathLike = "screen.db",
    calculator: Any = None,
    fmax: float = 0.05,
    steps: int = 300,
    optimizer: str = "FIRE",
    fix_bottom: int | None = 2,
    site_kinds: Sequence[str] | None = None,
    move_tolerance: float = 0.5,
    out_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    retry_failed: bool = False,
    callback: Callable[[str, int], None] | None = None,
    progress: bool = True,
    executor: Any = None,
    chunk_size: int = 16,
    refine: str | None = None,
    top_k: int = 3,
    refine_mode: str = "sp",
    rank_by: str = "energy",
    kappa: float = 1.0,
    refine_fmax: float | None = None,
    refine_steps: int = 300,
    journal_dir: str | os.PathLike | None = None,
    uncertainty_threshold: float = 0.1,
    refine_optimizer: str = "surrogate",
    refine_anomalous: bool | None = None,
) -> ScreenResult:
    """Screen ``adsorbates`` over ``slabs``; see :mod:`equiformer_calc.workflows.screening` for the method.

    slabs: a mapping name -> slab, or a sequence of slabs; a slab is ase.Atoms, a pymatgen
    Structure / Slab, or a (metal, facet) pair built with :func:`~equiformer_calc.surfaces.build_surface`
    (unnamed slabs are named ``<metal>-<facet>`` when built here, else ``<formula>-<geometry hash>``).
    adsorbates: names of :data:`~equiformer_calc.surfaces.ADSORBATES` (O, OH, CO, H, N,
    C, NO, CH, CH2, CH3, NH, NH2, H2O) or ase.Atoms templates (binding atom first, pointing up;
    named by ``info['name']`` or their formula). Elements other than H, C, N, O have no
    gas-phase reference. db: path (SQLite) or database URL for ``ase.db.connect``.
    calculator: the model (an EquiformerCalculator, a Predictor, a
    :class:`~equiformer_calc.calculators.settings.ModelSettings` or a checkpoint name or path;
    default: the shipped checkpoint). fmax / steps / optimizer / fix_bottom: relaxation settings (all
    structures). site_kinds: only these site kinds (e.g. ``["ontop", "fcc"]``).
    move_tolerance: lateral shift (A) beyond which an adsorbate ``moved``.
    out_dir: write ``screen_summary.csv``, ``screen_sites.csv`` and ``screen_heatmap.png`` there.
    batch_size: relaxations in flight at once. retry_failed: redo tasks whose earlier attempt
    failed (the failed row is deleted after the new one is written). callback(task_key, row_id):
    called after each row is written (an exception stops the run; what was written stays).
    executor: an :class:`~equiformer_calc.distributed.Executor` (e.g. from
    :func:`~equiformer_calc.distributed.open_executor`) to fan the relaxations out as tasks of
    ``chunk_size`` structures, each relaxed with :func:`relax_batch` (``batch_size`` in flight)
    on a worker's copy of the model; this process alone writes the database, as chunks
    complete. The numbers depend on the chunk size (which structures share a batched model
    call) and on torch's threads per process (float32 sums differ in the last bits), not on the
    executor or the number of workers.
    Without an executor everything runs here, in batches of ``batch_size``, as before.
    refine: a reference calculator (labeller name ``emt`` / ``sevennet`` / ``module:factory``) that then
    verifies the ``top_k`` lowest valid ML minima of every group, by single points (``refine_mode="sp"``)
    or relaxations (``"relax"``, to ``refine_fmax``, default ``fmax``, at most ``refine_steps``),
    ranked by ``rank_by`` ("energy" or "lcb": ``e_ads - kappa * e_ads_uncertainty``); journals in
    ``journal_dir`` (default ``<db>.refine``); see :mod:`.refine`. refine_optimizer: how the reference
    relaxes (gas molecules and clean slabs in both modes, the candidates in mode "relax"): "surrogate"
    (default: steered by this screen's model, the same force criterion on the reference's forces in fewer
    reference calls; :class:`~equiformer_calc.workflows.surrogate.SurrogateOptimizer`) or "bfgs" (BFGS on the
    reference alone). The summary gains ``e_ads_ref``, ``ref_site``, ``ref_calls`` ...;
    :attr:`ScreenResult.refine` and ``screen_refine.json`` have the call accounting (all reference calls, gas
    and slabs included). refine_anomalous (``refine_mode="relax"`` only; None, the default: on in mode
    "relax", off in "sp"): also relax, with the reference, the model's reconstructed or intercalated minima
    that rank below the K-th valid one (the reference may climb out of the student's hole; its own anomaly
    check decides).
    uncertainty_threshold: an ``e_ads_uncertainty`` (eV) above which a group's best is ``uncertain``
    (marked on the heat map).
    """
    if refine is not None:
        from .refine import RANK_BY, check_refine_options

        refine_anomalous = check_refine_options(refine_mode, refine_optimizer, refine_anomalous)
        if rank_by not in RANK_BY:
            raise ValueError(f"rank_by must be one of {RANK_BY}, got {rank_by!r}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
    if optimizer.upper() not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
    surfaces = normalise_surfaces(slabs)
    templates = adsorbate_templates(adsorbates, gas_referenced=True)
    calc = resolve_calculator(calculator)
    check_supported(calc, surfaces, templates)  # before the database or any relaxation
    fingerprint = model_fingerprint(calc)
    settings = {"fmax": fmax, "steps": steps, "optimizer": optimizer.upper(), "fix_bottom": fix_bottom}
    store = ScreenStore(db, fingerprint, settings,
                        common={**fingerprint, "optimizer": optimizer.upper(), "fmax_target": fmax, "max_steps": steps})
    plan = plan_screen(surfaces, templates, site_kinds)
    store.check_surfaces(plan.slabs)
    relaxer = _Relaxer(calc, store, fmax, steps, optimizer, fix_bottom, batch_size, progress, retry_failed, callback,
                       executor, chunk_size)
    # phase 1: references (gas molecules, clean slabs); phase 2: adsorbate systems
    relaxer.run(plan.gas, None, "gas-phase reference molecules")
    relaxer.run(plan.slabs, None, "clean slabs")
    checks = _adsorption_checks(store, plan.all_sites, store.reference_potentials(), move_tolerance, fix_bottom, calc)
    relaxer.run(plan.adsorbates, checks, "adsorbate systems")

    sites = site_rows(plan.adsorbates, store, relaxer.errors)
    summary = summarise(surfaces, [n for n, _ in templates], sites, uncertainty_threshold)
    refined = None
    if refine is not None:
        from .refine import merge_refinement, refine_screen

        refined = refine_screen(store, plan, sites, refine, top_k, refine_mode, rank_by, kappa,
                                fmax if refine_fmax is None else refine_fmax, refine_steps, fix_bottom, executor,
                                journal_dir, move_tolerance, refine_optimizer, calc, refine_anomalous)
        merge_refinement(refined, plan, sites, summary)
    files = write_screen_outputs(summary, sites, Path(out_dir)) if out_dir is not None else {}
    if refined is not None and out_dir is not None:
        from ...io import write_json

        files["refine"] = write_json({
            "reference": refined.labeller, "mode": refined.mode, "optimizer": refined.optimizer, "anomalous": refine_anomalous, "top_k": top_k, "rank_by": rank_by,
            "reference_calls": refined.calls, "gas_and_slab_calls": refined.reference_calls,
            "paid_calls_this_run": refined.paid_calls, "paid_seconds_this_run": refined.seconds,
            "groups": len(refined.groups), "errors": refined.errors,
        }, Path(out_dir) / "screen_refine.json")
    log.info("screening: %d relaxations run, %d found in %s; %d surface x adsorbate pairs",
             store.computed, store.skipped, store.name, len(summary))
    for key, error in relaxer.errors.items():
        log.error("%s: %s", key, error)
    return ScreenResult(summary, sites, store.name, files, store.computed, store.skipped, relaxer.errors, refined)
