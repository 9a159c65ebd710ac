"""Dynamic micro-batching of concurrent prediction requests over one :class:`Predictor`.

Requests are queued as :class:`Job` objects (already validated structures + the properties
asked for). A single worker thread owns the model (torch modules are not safe to run from
several threads at once) and merges queued jobs into one ``predictor.predict`` call until the
batch holds ``max_batch_atoms`` atoms or the oldest job has waited ``max_wait_ms``. A job larger
than the budget runs on its own; the predictor then splits it into chunks of
``predictor.max_atoms_per_batch`` atoms.

Jobs only share a model call when they are compatible: jobs asking for stress (all of whose
structures are 3D-periodic, checked before queueing) are merged only with each other. Every
structure is validated before it is queued, so a merged call rarely fails; when it does (e.g.
overlapping atoms, found while building the radius graph), every job of the batch is re-run on
its own so one bad request cannot fail the requests it was merged with.

The asyncio side awaits :meth:`Batcher.submit`'s ``concurrent.futures.Future`` (see
:meth:`Batcher.predict_async`, which also implements the per-request timeout).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..graph import Structure, StructureError
from ..protocols import PredictorLike

__all__ = ["Batcher", "BatchStats", "Job", "BatcherClosedError", "RequestTimeoutError", "QueueFullError"]

log = logging.getLogger(__name__)


class BatcherClosedError(RuntimeError):
    """The batcher is shutting down and accepts no new work."""


class QueueFullError(RuntimeError):
    """Too many requests are waiting; the client should retry later."""


class RequestTimeoutError(TimeoutError):
    """A request was not answered within its timeout."""


@dataclass
class Job:
    """One request: validated structures, the properties asked for, and where the answer goes."""

    structures: list[Structure]
    properties: tuple[str, ...]
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def num_atoms(self) -> int:
        return sum(len(s) for s in self.structures)

    @property
    def wants_stress(self) -> bool:
        return "stress" in self.properties


@dataclass
class BatchStats:
    """What one model call did; passed to the ``on_batch`` callback (metrics)."""

    requests: int
    structures: int
    atoms: int
    seconds: float
    fallback: bool = False


_STOP = object()
#: with an ``arriving`` callback that reports 0, wait only this long for stragglers
_GRACE_S = 0.0005


class Batcher:
    """Queue + single worker thread that merges concurrent jobs into batched model calls.

    ``enabled=False`` runs every job on its own (same worker thread; the baseline for the
    benchmark). ``on_batch`` is called from the worker thread after every model call.
    ``arriving`` (optional) returns how many requests have been received but not submitted yet
    (being read or validated); when it is 0 the worker does not wait ``max_wait_ms`` for more,
    so a lone client pays no batching latency.
    """

    def __init__(
        self,
        predictor: PredictorLike,
        max_batch_atoms: int = 1024,
        max_wait_ms: float = 5.0,
        enabled: bool = True,
        max_queued_requests: int = 1024,
        on_batch: Callable[[BatchStats], None] | None = None,
        arriving: Callable[[], int] | None = None,
    ) -> None:
        if max_batch_atoms < 1:
            raise ValueError(f"max_batch_atoms must be >= 1, got {max_batch_atoms}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.predictor = predictor
        self.max_batch_atoms = int(max_batch_atoms)
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self.enabled = bool(enabled)
        self.max_queued_requests = int(max_queued_requests)
        self.on_batch = on_batch
        self.arriving = arriving
        self._queue: "queue.Queue[Any]" = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._pending_jobs = 0  # submitted and not finished (queued or running)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._lock:
            if self._thread is not None:
                return
            self._closed = False
            self._thread = threading.Thread(target=self._run, name="equiformer-batcher", daemon=True)
            self._thread.start()
        log.debug("batcher started (batching=%s, max_batch_atoms=%d, max_wait_ms=%.1f)",
                  self.enabled, self.max_batch_atoms, 1000 * self.max_wait_s)

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new jobs, finish every queued and running one, then stop the worker."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        self._queue.put(_STOP)
        thread.join(timeout)
        if thread.is_alive():
            log.warning("batcher worker still busy after %.1f s; leaving it", timeout or 0.0)
        else:
            with self._lock:
                self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def queue_depth(self) -> int:
        """Jobs submitted and not finished yet."""
        return self._pending_jobs

    # ------------------------------------------------------------------ submitting
    def submit(self, structures: Sequence[Structure], properties: Sequence[str]) -> concurrent.futures.Future:
        """Queue validated structures; the future resolves to one result dict per structure."""
        if not structures:
            raise ValueError("a job needs at least one structure")
        with self._lock:
            if self._closed:
                raise BatcherClosedError("the server is shutting down")
            if self._pending_jobs >= self.max_queued_requests:
                raise QueueFullError(
                    f"{self._pending_jobs} requests are already waiting (limit {self.max_queued_requests}); retry later"
                )
            self._pending_jobs += 1
            job = Job(list(structures), tuple(properties))
            # queued under the lock: every accepted job is ahead of stop()'s sentinel
            self._queue.put(job)
        job.future.add_done_callback(self._job_done)
        if self._thread is None:
            self.start()
        return job.future

    def _job_done(self, _future: concurrent.futures.Future) -> None:
        with self._lock:
            self._pending_jobs -= 1

    def predict(
        self, structures: Sequence[Structure], properties: Sequence[str], timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """Blocking convenience: submit and wait (raises :class:`RequestTimeoutError`)."""
        future = self.submit(structures, properties)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise RequestTimeoutError(f"no result within {timeout} s") from None

    async def predict_async(
        self, structures: Sequence[Structure], properties: Sequence[str], timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """Submit and await the result; a job still queued at the timeout is dropped."""
        return await self.wait_async(self.submit(structures, properties), timeout)

    @staticmethod
    async def wait_async(future: concurrent.futures.Future, timeout: float | None = None) -> list[dict[str, Any]]:
        """Await a future from :meth:`submit` (raises :class:`RequestTimeoutError`, cancelling the
        job if it has not started)."""
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except asyncio.TimeoutError:
            future.cancel()  # no-op if the model is already running it
            raise RequestTimeoutError(f"no result within {timeout} s") from None

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        pending: deque[Job] = deque()
        stopping = False
        while True:
            if not pending:
                if stopping:
                    break
                item = self._queue.get()
                if item is _STOP:
                    stopping = True
                    continue
                pending.append(item)
            # gather more work until the budget is full or the oldest job has waited long enough
            if self.enabled and not stopping:
                deadline = pending[0].enqueued + self.max_wait_s
                while self._compatible_atoms(pending) < self.max_batch_atoms:
                    now = time.monotonic()
                    wait = deadline - now
                    if self.arriving is not None and self.arriving() <= 0:
                        # nobody is about to submit: waiting would only add latency (after a short
                        # grace period for requests the event loop has not picked up yet)
                        wait = min(wait, pending[-1].enqueued + _GRACE_S - now)
                    try:
                        item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stopping = True
                        break
                    pending.append(item)
            elif stopping:
                self._drain_queue_into(pending)
            batch = self._take_batch(pending)
            if batch:
                self._execute(batch)
        log.debug("batcher worker stopped")

    def _drain_queue_into(self, pending: deque[Job]) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                pending.append(item)

    def _compatible_atoms(self, pending: deque[Job]) -> int:
        stress = pending[0].wants_stress
        return sum(j.num_atoms for j in pending if j.wants_stress == stress and not j.future.cancelled())

    def _take_batch(self, pending: deque[Job]) -> list[Job]:
        """Remove and return the jobs of the next model call: FIFO among compatible jobs (same
        stress flag), stopping at the first one that would overflow the atom budget."""
        batch: list[Job] = []
        atoms = 0
        stress: bool | None = None
        keep: deque[Job] = deque()
        while pending:
            job = pending.popleft()
            if job.future.cancelled():
                continue  # timed out while queued: drop it
            if stress is not None and job.wants_stress != stress:
                keep.append(job)  # incompatible: a later call
                continue
            if batch and (not self.enabled or atoms + job.num_atoms > self.max_batch_atoms):
                keep.append(job)
                keep.extend(pending)
                pending.clear()
                break
            if not job.future.set_running_or_notify_cancel():
                continue
            batch.append(job)
            atoms += job.num_atoms
            stress = job.wants_stress
        pending.extend(keep)
        return batch

    def _execute(self, batch: list[Job]) -> None:
        structures = [s for job in batch for s in job.structures]
        properties = sorted({p for job in batch for p in job.properties})
        start = time.perf_counter()
        try:
            results = self.predictor.predict(structures, properties)
        except Exception as exc:  # noqa: BLE001 - reported to the waiting requests
            if len(batch) == 1:
                self._report(BatchStats(1, len(structures), batch[0].num_atoms, time.perf_counter() - start))
                _set_exception(batch[0], self._locate(batch[0], exc))
                return
            log.warning("merged model call of %d requests failed (%s); running them one by one", len(batch), exc)
            self._report(BatchStats(len(batch), len(structures), sum(j.num_atoms for j in batch),
                                    time.perf_counter() - start, fallback=True))
            for job in batch:
                self._execute_alone(job)
            return
        atoms = sum(j.num_atoms for j in batch)
        self._report(BatchStats(len(batch), len(structures), atoms, time.perf_counter() - start))
        offset = 0
        for job in batch:
            n = len(job.structures)
            mine = results[offset : offset + n]
            offset += n
            if not job.future.done():
                job.future.set_result([_select(r, job.properties) for r in mine])

    def _execute_alone(self, job: Job) -> None:
        start = time.perf_counter()
        try:
            results = self.predictor.predict(job.structures, list(job.properties))
        except Exception as exc:  # noqa: BLE001
            _set_exception(job, self._locate(job, exc))
        else:
            if not job.future.done():
                job.future.set_result([_select(r, job.properties) for r in results])
        finally:
            self._report(BatchStats(1, len(job.structures), job.num_atoms, time.perf_counter() - start))

    def _locate(self, job: Job, exc: Exception) -> Exception:
        """Prefix a structure error with the index (within its request) of the structure at fault."""
        if not isinstance(exc, StructureError) or str(exc).startswith("structure "):
            return exc
        if len(job.structures) == 1:
            return StructureError(f"structure 0: {exc}")
        for k, structure in enumerate(job.structures):
            try:
                self.predictor.graph(structure)
            except StructureError as inner:
                return StructureError(f"structure {k}: {inner}")
            except Exception:  # noqa: BLE001 - only locating; report the original error
                break
        return exc

    def _report(self, stats: BatchStats) -> None:
        if self.on_batch is not None:
            try:
                self.on_batch(stats)
            except Exception:  # noqa: BLE001 - metrics must never break serving
                log.exception("on_batch callback failed")


def _select(result: dict[str, Any], properties: Sequence[str]) -> dict[str, Any]:
    """Keep the energy, the asked-for properties and their committee spreads (``energy_uncertainty``, and
    ``forces_uncertainty`` with forces, when the model has a committee) of one structure's result."""
    keep = {"energy", "energy_uncertainty", *properties, *(["forces_uncertainty"] if "forces" in properties else [])}
    return {k: v for k, v in result.items() if k in keep}


def _set_exception(job: Job, exc: Exception) -> None:
    if not job.future.done():
        job.future.set_exception(exc)
