"""Data generation, step 3: the run (``equiformer-calc datagen``). An OC20-S2EF-style dataset,
labelled by EMT, a teacher potential or your own calculator: the plan of :mod:`.plan`, each system
labelled by :mod:`.label` (in worker processes or on a Dask cluster), checkpointed, then written out.

The labeller (``--labeller emt | sevennet | module:factory``, see :mod:`equiformer_calc.data.labellers`)
drives every relaxation and MD run that makes the frames and labels them; its name and version are
stored in every frame (``labeller``, ``labeller_version``). With EMT the dataset covers seven fcc
metals (Cu, Ag, Au, Ni, Pd, Pt, Al); the ``teacher`` size adds Rh and Ir, slabs at ASE's default
(experimental) lattice constants beside the labeller's own, and gas-phase molecules (H2, H2O, CO, N2,
CO2, NH3, CH4, O2, NO, CH3OH) at and near equilibrium. Systems come as

* **bulk** cells (primitive / conventional cells and small supercells; randomly strained and
  rattled; fully periodic; energy, forces *and* stress labels),
* **clean slabs** of the (111), (100), (110) and stepped (211) facets, and
* **adsorbate + slab** systems with 13 small H/C/N/O adsorbates placed on every site kind of
  every facet and at random positions above the surface.

Every system contributes frames of three kinds, as in OC20 S2EF: frames sampled along a BFGS
relaxation (``relax``), Gaussian-rattled frames (``rattle``) and short Langevin-MD frames
(``md``), so the model also sees forces far from minima. Slab atoms in the bottom half are
held by :class:`~ase.constraints.FixAtoms` (stored in the frames and as a per-atom ``fixed``
array), but **labels are raw forces** (``get_forces(apply_constraint=False)``): ASE would
otherwise report zero forces on fixed atoms, which is wrong physics to learn from.

Splits (one extxyz file each): ``train``; ``val`` (random frames held out from training
systems); ``test_id`` (held-out (metal, facet, adsorbate, site) groups, bulk and slab systems of
seen combinations); ``test_ood`` (every system of a few (metal, adsorbate) combinations never
seen in training). ``relax_initial.extxyz`` / ``relax_relaxed.extxyz`` / ``relax_tasks.json``
hold initial structures and EMT-relaxed references for held-out relaxation benchmarks.

Everything is a pure function of ``(seed, size)``: each system draws its random numbers from
its own seed derived from the global seed and the system id, so the output files are
byte-identical whatever the number of worker processes. Work is checkpointed per system
under ``OUT/.datagen-work/shards`` (``NNNNNN.extxyz.xz`` + ``NNNNNN.json``, no pickles), and every
labeller call of an unfinished system is journaled (``journal/NNNNNN.jsonl``), so a run killed at any
point resumes where it stopped without labelling anything twice; final files are written to
temporary names and renamed, and ``summary.json`` (written last) marks a complete dataset.
"""

from __future__ import annotations

import contextlib
import json
import logging
import lzma
import multiprocessing as mp
import os
import platform
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ase import Atoms
from ase.io import read as ase_read
from ase.io import write as ase_write

from ..io import file_sha256, write_text_atomic
from ..runtime import set_blas_threads, single_threaded_blas
from ..surfaces import EMT_LATTICE_CONSTANTS
from .label import Context, compute_task, fit_lattice_constants
from .labellers import resolve_labeller
from .plan import GENERATOR_VERSION, SPLITS, DatasetSize, Task, dataset_fingerprint, plan_tasks, resolve_size

__all__ = ["LabellingFailed", "generate_dataset"]

logger = logging.getLogger(__name__)


_WORK_DIR = ".datagen-work"
_SUMMARY = "summary.json"


def _shard_paths(shard_dir: Path, task_id: int) -> tuple[Path, Path]:
    """(frames, metadata) files of one finished task; the metadata file is written last."""
    return shard_dir / f"{task_id:06d}.extxyz.xz", shard_dir / f"{task_id:06d}.json"


def _journal_path(shard_dir: Path, task_id: int) -> Path:
    return shard_dir.parent / "journal" / f"{task_id:06d}.jsonl"


def _run_task(args: tuple[Task, Context]) -> dict[str, Any]:
    """Worker entry point: compute one task and checkpoint it to its shard files.

    Frames go to ``NNNNNN.extxyz.xz``, then metadata (and a relaxation record) to ``NNNNNN.json``;
    both are written to temporary names and renamed, the JSON last, so a shard exists only complete.
    With ``ctx.journal`` every labeller call is journaled first, and a rerun replays it.
    """
    task, ctx = args
    shard_dir = Path(ctx.shard_dir)
    frames_xz, meta = compute_task(task, ctx, _journal_path(shard_dir, task.task_id) if ctx.journal else None)
    _store_shard(Path(ctx.shard_dir), task.task_id, frames_xz, meta)
    return meta


def _store_shard(shard_dir: Path, task_id: int, frames_xz: bytes, meta: dict[str, Any]) -> None:
    """Checkpoint a computed task: frames, then metadata (each to a temporary name, renamed), then
    drop its journal, whose calls the shard now holds."""
    frames_path, meta_path = _shard_paths(shard_dir, task_id)
    tmp = frames_path.with_name(f"{frames_path.name}.tmp{os.getpid()}")
    tmp.write_bytes(frames_xz)
    os.replace(tmp, frames_path)
    write_text_atomic(meta_path, json.dumps(meta, indent=1, sort_keys=True))
    _journal_path(shard_dir, task_id).unlink(missing_ok=True)


class LabellingFailed(RuntimeError):
    """Some labelling tasks failed on an executor; the finished ones are checkpointed."""


def _compute_task_job(args: tuple[Task, Context]) -> tuple[bytes, dict[str, Any]]:
    """Task of :func:`generate_dataset` on an executor (a Dask worker): compute, return to the
    client, which alone writes the shard. The labeller call journal is kept when this process sees
    the output folder (same machine or shared file system), so even a task cut short resumes
    mid-way; elsewhere a retried task starts over."""
    task, ctx = args
    shard_dir = Path(ctx.shard_dir)
    journal = ctx.journal and shard_dir.is_dir()
    with single_threaded_blas():
        return compute_task(task, ctx, _journal_path(shard_dir, task.task_id) if journal else None)


def _executor_jobs(executor: Any, jobs: list[tuple[Task, Context]], failures: list[str]) -> Iterator[dict[str, Any]]:
    """Run ``jobs`` on ``executor`` and store each shard here as it arrives; a failing task is
    appended to ``failures`` (``"task N (system): error"``) and the others go on."""
    for outcome in executor.map(_compute_task_job, jobs, name="datagen"):
        task, ctx = jobs[outcome.index]
        if outcome.error is not None:
            failures.append(f"task {task.task_id} ({task.kind} {task.system_id}): {outcome.error}")
            continue
        frames_xz, meta = outcome.value
        _store_shard(Path(ctx.shard_dir), task.task_id, frames_xz, meta)
        yield meta


def _read_summary(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _files_intact(out: Path, summary: Mapping[str, Any]) -> bool:
    """Whether every file listed in ``summary`` exists with its recorded size."""
    files = summary.get("files") or {}
    return bool(files) and all(
        (out / name).is_file() and (out / name).stat().st_size == meta.get("bytes") for name, meta in files.items()
    )


def _worker_init() -> None:
    set_blas_threads(1)


JobRunner = Callable[[Callable[[Any], dict[str, Any]], list[Any]], Iterable[dict[str, Any]]]


@contextlib.contextmanager
def _task_runner(workers: int, n_jobs: int) -> Iterator[JobRunner]:
    """A ``map``-like runner: in-process for one worker, else a process pool (unordered).

    Task results do not depend on where they run: each task seeds its own generator and every
    process uses single-threaded BLAS.
    """
    if workers <= 1 or n_jobs <= 1:
        with single_threaded_blas():
            yield map
        return
    # torch-based labellers: never fork a process whose OpenMP runtime is already running
    method = "fork" if "fork" in mp.get_all_start_methods() and "torch" not in sys.modules else "spawn"
    with mp.get_context(method).Pool(processes=min(workers, n_jobs), initializer=_worker_init) as pool:
        yield lambda fn, jobs: pool.imap_unordered(fn, jobs, chunksize=1)


def _read_shard(shard_dir: Path, task_id: int) -> tuple[list[Atoms], dict[str, Any]]:
    frames_path, meta_path = _shard_paths(shard_dir, task_id)
    meta = json.loads(meta_path.read_text())
    with lzma.open(frames_path, "rt") as fh:
        frames = ase_read(fh, index=":", format="extxyz")
    return frames, meta


def _shard_done(shard_dir: Path, task_id: int) -> bool:
    return all(p.exists() for p in _shard_paths(shard_dir, task_id))


def generate_dataset(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    size: str | DatasetSize | Mapping[str, Any] = "small",
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
    labeller: str = "emt",
    compress: bool = False,
    executor: Any = None,
) -> dict[str, Any]:
    """Generate (or reuse) a labelled S2EF-style dataset under ``out_dir``.

    Args:
        out_dir: output directory (created if needed).
        seed: global seed; the output is a pure function of ``(seed, size, labeller)``.
        size: ``"small"`` | ``"medium"`` | ``"large"`` | ``"teacher"``, a :class:`DatasetSize`,
            or a mapping of :class:`DatasetSize` fields (explicit counts).
        workers: worker processes; the output does not depend on it.
        progress: show a tqdm progress bar (with an ETA).
        overwrite: replace a complete dataset made with other settings (otherwise that
            raises :class:`FileExistsError`).
        labeller: ``emt``, ``sevennet[:MODEL]`` or ``module:factory`` (see
            :func:`equiformer_calc.data.labellers.resolve_labeller`). Anything but EMT has every
            call journaled, so a killed run resumes without labelling anything twice.
        compress: write the split files xz-compressed (``*.extxyz.xz``; ASE reads them directly).
        executor: an :class:`~equiformer_calc.distributed.Executor` (e.g. Dask) to run the tasks
            on instead of ``workers`` local processes; this process writes every shard as its
            task returns, so a killed run resumes from the shards here. The output does not
            depend on it.

    Returns:
        The summary dict that is also written to ``out_dir/summary.json`` (frame counts per
        split / kind / metal / adsorbate, seed, size, generator version, labeller calls and time, ...).

    Files written: ``{train,val,test_id,test_ood}.extxyz``, ``relax_initial.extxyz``,
    ``relax_relaxed.extxyz`` (each with ``.xz`` when compressed), ``relax_tasks.json`` and
    ``summary.json``.
    """
    out = Path(out_dir)
    size_name, spec = resolve_size(size)
    resolved = resolve_labeller(labeller)
    resolved.check_elements(set(spec.metals) | {"H", "C", "N", "O"})
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = dataset_fingerprint(seed, size_name, spec, resolved, compress)
    existing = _complete_dataset(out, fingerprint, overwrite)
    if existing is not None:
        logger.info("%s holds a complete dataset (seed=%d, size=%s): nothing to do", out, seed, size_name)
        return existing
    work = _work_dir(out, fingerprint)
    shard_dir = work / "shards"

    wall_start = time.perf_counter()
    lattice = _lattice_constants(resolved, spec, work)
    ctx = Context(
        seed=int(seed),
        spec=spec,
        shard_dir=str(shard_dir),
        labeller=resolved.name,
        labeller_version=resolved.version,
        lattice=dict(lattice),
        journal=resolved.name != "emt",
    )
    tasks, ood = plan_tasks(seed, spec)
    done = sum(1 for t in tasks if _shard_done(shard_dir, t.task_id))  # resumed work
    logger.info(
        "datagen: labeller %s (%s), seed=%d size=%s -> %d systems + %d relaxation references; %d already done; "
        "%d worker(s); test_ood combos: %s",
        resolved.name,
        resolved.version,
        seed,
        size_name,
        sum(t.kind != "relax_task" for t in tasks),
        sum(t.kind == "relax_task" for t in tasks),
        done,
        workers,
        ", ".join(f"{m}+{a}" for m, a in ood),
    )
    metas, workers = _label(tasks, ctx, shard_dir, workers, executor, progress)
    compute_seconds = time.perf_counter() - wall_start

    logger.info("writing extxyz files to %s", out)
    summary = _write_outputs(out, shard_dir, tasks, compress)
    labeller_seconds = sum(m["labeller_seconds"] for m in metas.values())
    discarded: Counter = Counter()
    for m in metas.values():
        discarded.update(m["discarded"])
    summary.update(
        fingerprint=fingerprint,
        seed=int(seed),
        size=size_name,
        spec=spec.to_dict(),
        generator_version=GENERATOR_VERSION,
        ase_version=__import__("ase").__version__,
        python=platform.python_version(),
        workers=int(workers),
        test_ood_combos=[list(c) for c in ood],
        labeller=resolved.name,
        labeller_version=resolved.version,
        lattice_constants=dict(lattice),
        discarded_frames=dict(sorted(discarded.items())),
        labeller_calls=int(sum(m["labeller_calls"] for m in metas.values())),
        labeller_wall_seconds=round(labeller_seconds, 2),
        task_seconds=round(sum(m["seconds"] for m in metas.values()), 2),
        compute_wall_seconds=round(compute_seconds, 2),
        wall_seconds=round(time.perf_counter() - wall_start, 2),
    )
    write_text_atomic(out / _SUMMARY, json.dumps(summary, indent=1, sort_keys=True))
    shutil.rmtree(work, ignore_errors=True)
    logger.info(
        "datagen done in %.1f s (labeller %.1f s over %d calls): %s frames; %d relaxation references; discarded %s",
        summary["wall_seconds"],
        labeller_seconds,
        summary["labeller_calls"],
        summary["frames_per_split"],
        summary["relax_tasks"],
        dict(discarded) or "none",
    )
    return summary


def _complete_dataset(out: Path, fingerprint: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """Set-up: the summary of a complete dataset of these settings in ``out`` (nothing to do), else
    None after removing the summary of a dataset that is incomplete, changed, or (``overwrite``) of
    other settings; :class:`FileExistsError` for another complete dataset without ``overwrite``."""
    summary_path = out / _SUMMARY
    if not summary_path.exists():
        return None
    existing = _read_summary(summary_path)
    if existing is not None and existing.get("fingerprint") == json.loads(json.dumps(fingerprint)):
        if _files_intact(out, existing):
            return existing
        logger.warning("%s: dataset files are missing or changed; regenerating", out)
    elif not overwrite:
        raise FileExistsError(f"{out} holds a dataset with a different seed/size/version; pass overwrite=True")
    summary_path.unlink()  # the directory no longer holds a complete dataset
    return None


def _work_dir(out: Path, fingerprint: dict[str, Any]) -> Path:
    """Set-up: the working folder of this run (shards of finished tasks, the plan), kept from an
    interrupted run of the same plan and discarded otherwise."""
    work = out / _WORK_DIR
    plan_file = work / "plan.json"
    if work.exists():
        try:
            same = json.loads(plan_file.read_text()) == json.loads(json.dumps(fingerprint))
        except (OSError, json.JSONDecodeError):
            same = False
        if not same:
            logger.info("discarding stale partial work in %s", work)
            shutil.rmtree(work)
    (work / "shards").mkdir(parents=True, exist_ok=True)
    write_text_atomic(plan_file, json.dumps(fingerprint, indent=1, sort_keys=True))
    return work


def _lattice_constants(resolved: Any, spec: DatasetSize, work: Path) -> dict[str, float]:
    """The fcc lattice constants of the labeller: EMT's table, or fitted once per run (kept in
    ``work`` so that a resumed run uses the same ones)."""
    if resolved.name == "emt":
        return {m: EMT_LATTICE_CONSTANTS[m] for m in spec.metals}
    lattice_file = work / "lattice.json"
    try:
        return json.loads(lattice_file.read_text())
    except (OSError, json.JSONDecodeError):
        logger.info("fitting %s's own fcc lattice constants (%d metals)", resolved.name, len(spec.metals))
        lattice = fit_lattice_constants(resolved, spec.metals)
        write_text_atomic(lattice_file, json.dumps(lattice, indent=1, sort_keys=True))
        return lattice


def _label(tasks: list[Task], ctx: Context, shard_dir: Path, workers: int, executor: Any,
           progress: bool) -> tuple[dict[int, dict[str, Any]], int]:
    """The labelling loop: every task not yet in a shard runs (local worker processes or the
    executor's), most expensive first; returns every task's shard metadata and the worker count.
    Raises :class:`LabellingFailed` naming the tasks that failed (the others stay checkpointed)."""
    from ..io import progress as tqdm  # live bar on a terminal, plain lines in a log

    # expensive systems first for better load balance across workers
    cost = {"relax_task": 3, "adsorbate": 2, "slab": 1, "bulk": 0, "gas": 0}
    order = sorted(tasks, key=lambda t: (-cost[t.kind], t.task_id))
    metas: dict[int, dict[str, Any]] = {}
    jobs = []
    for t in order:
        if _shard_done(shard_dir, t.task_id):  # checkpoint of an interrupted run
            metas[t.task_id] = json.loads(_shard_paths(shard_dir, t.task_id)[1].read_text())
        else:
            jobs.append((t, ctx))
    frames_done = sum(m["n_frames"] for m in metas.values())
    interactive = sys.stderr.isatty()
    failures: list[str] = []
    if executor is not None:
        workers = executor.n_workers
        runner: contextlib.AbstractContextManager[JobRunner] = contextlib.nullcontext(
            lambda _fn, todo: _executor_jobs(executor, todo, failures)
        )
    else:
        runner = _task_runner(workers, len(jobs))
    with (
        runner as run_jobs,
        tqdm(
            total=len(tasks),
            initial=len(metas),
            desc="datagen",
            unit="sys",
            disable=not progress,
            mininterval=0.5 if interactive else 15.0,
            dynamic_ncols=True,
        ) as bar,
    ):
        for meta in run_jobs(_run_task, jobs):
            metas[meta["task_id"]] = meta
            frames_done += meta["n_frames"]
            bar.set_postfix(frames=frames_done, refresh=False)
            bar.update(1)
    if failures:
        raise LabellingFailed(
            f"{len(failures)} of {len(jobs)} labelling task(s) failed (the others are checkpointed in {shard_dir}; "
            "rerun to retry only these): " + "; ".join(failures)
        )
    return metas, workers


def _write_outputs(out: Path, shard_dir: Path, tasks: list[Task], compress: bool = False) -> dict[str, Any]:
    """Concatenate shards in task order into the split files and relaxation references."""
    ext = ".extxyz.xz" if compress else ".extxyz"

    def open_tmp(name: str) -> Any:
        path = out / f"{name}.tmp"
        # preset=6 with a fixed check: the compressed bytes are a pure function of the text
        return lzma.open(path, "wt", preset=6, check=lzma.CHECK_CRC64) if compress else path.open("w")

    handles = {s: open_tmp(f"{s}{ext}") for s in SPLITS}
    relax_names = (f"relax_initial{ext}", f"relax_relaxed{ext}")
    relax_handles = [open_tmp(n) for n in relax_names]
    counts: dict[str, Counter] = {k: Counter() for k in ("split", "kind", "config", "metal", "adsorbate", "facet")}
    systems: dict[str, set[str]] = {s: set() for s in SPLITS}
    records: list[dict[str, Any]] = []
    try:
        for task in tasks:
            shard_frames, meta = _read_shard(shard_dir, task.task_id)
            if task.kind == "relax_task":
                record = dict(meta["record"], index=len(records))
                records.append(record)
                ase_write(relax_handles[0], shard_frames[0], format="extxyz")
                ase_write(relax_handles[1], shard_frames[1], format="extxyz")
                continue
            for frame in shard_frames:
                info = frame.info
                split = info["split"]
                ase_write(handles[split], frame, format="extxyz")
                systems[split].add(info["system_id"])
                counts["split"][split] += 1
                counts["kind"][f"{split}/{info['frame_kind']}"] += 1
                counts["config"][f"{split}/{info['config_type']}"] += 1
                counts["metal"][info["metal"]] += 1
                counts["adsorbate"][info["adsorbate"]] += 1
                counts["facet"][info["facet"]] += 1
    finally:
        for fh in [*handles.values(), *relax_handles]:
            fh.close()
    files: dict[str, dict[str, Any]] = {}
    for name in [f"{s}{ext}" for s in SPLITS] + list(relax_names):
        os.replace(out / f"{name}.tmp", out / name)
    write_text_atomic(out / "relax_tasks.json", json.dumps(records, indent=1))
    for name in [f"{s}{ext}" for s in SPLITS] + [*relax_names, "relax_tasks.json"]:
        files[name] = {"bytes": (out / name).stat().st_size, "sha256": file_sha256(out / name)}
    return {
        "files": files,
        "frames_total": int(sum(counts["split"].values())),
        "frames_per_split": {s: int(counts["split"][s]) for s in SPLITS},
        "frames_per_split_kind": dict(sorted(counts["kind"].items())),
        "frames_per_split_config": dict(sorted(counts["config"].items())),
        "frames_per_metal": dict(sorted(counts["metal"].items())),
        "frames_per_adsorbate": dict(sorted(counts["adsorbate"].items())),
        "frames_per_facet": dict(sorted(counts["facet"].items())),
        "systems_per_split": {s: len(systems[s]) for s in SPLITS},
        "relax_tasks": len(records),
    }


# --------------------------------------------------------------------------------------
# CLI
