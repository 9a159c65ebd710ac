"""The Dask side of the executor seam (imported only when Dask is asked for)."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Iterator

from distributed import Client, LocalCluster, as_completed
from distributed.diagnostics.plugin import WorkerPlugin

from ..runtime import set_threads
from .executor import Executor, Outcome, as_calculator, drop_worker_model, error_text, model_key, set_worker_model, unique_key

__all__ = ["ModelPlugin", "DaskExecutor", "local_cluster_client"]

log = logging.getLogger(__name__)


class ModelPlugin(WorkerPlugin):
    """Loads one model into every worker process once, and keeps it there.

    The plugin carries the calculator (pickled as its config + safetensors weights, so workers
    need no checkpoint file); Dask unpickles it once per worker, ``setup`` files it under ``key``
    for :func:`~equiformer_calc.distributed.worker_model` and sets the worker's torch threads.
    Workers that join later (or replace a dead one) run ``setup`` too.
    """

    def __init__(self, calculator: Any, key: str, torch_threads: int | None = None) -> None:
        self.calculator = calculator
        self.key = key
        self.torch_threads = torch_threads

    def setup(self, worker: Any) -> None:
        set_threads(self.torch_threads)
        set_worker_model(self.key, self.calculator)
        log.debug("worker %s: model %s loaded", getattr(worker, "address", "?"), self.key)

    def teardown(self, worker: Any) -> None:
        drop_worker_model(self.key)


class _ThreadsPlugin(WorkerPlugin):
    """Sets torch's intra-op threads of every worker (for tasks that need no registered model)."""

    def __init__(self, torch_threads: int) -> None:
        self.torch_threads = int(torch_threads)

    def setup(self, worker: Any) -> None:
        set_threads(self.torch_threads)


def local_cluster_client(workers: int) -> Client:
    """A client of a new LocalCluster: ``workers`` processes, one thread each, no dashboard."""
    cluster = LocalCluster(
        n_workers=int(workers), threads_per_worker=1, processes=True, dashboard_address=None,
        silence_logs=logging.WARNING,
    )
    return Client(cluster)


def _is_error_triple(result: Any) -> bool:
    """True for what ``as_completed(with_results=True, raise_errors=False)`` yields for a failed task."""
    return isinstance(result, tuple) and len(result) == 3 and isinstance(result[1], BaseException)


class DaskExecutor(Executor):
    """Tasks run on the workers of a ``dask.distributed.Client``.

    Each task gets a unique key, so a task is never confused with an earlier one; a worker that
    dies mid-task has that task rerun elsewhere by the scheduler (up to its
    ``distributed.scheduler.allowed-failures``, default 3, after which the outcome is a
    ``KilledWorker`` error). A result already fetched stays good when its worker dies afterwards
    (the future's status turns ``lost`` while it waits to be consumed). ``max_in_flight``
    bounds the tasks submitted at once (default: all).
    ``owns_client``: close the client (and its LocalCluster) in :meth:`close`.
    """

    def __init__(
        self, client: Client, torch_threads: int | None = None, max_in_flight: int | None = None,
        owns_client: bool = False,
    ) -> None:
        self.client = client
        self.torch_threads = torch_threads
        self.max_in_flight = max_in_flight
        self.owns_client = owns_client
        self._registered: set[str] = set()
        if torch_threads:
            client.register_plugin(_ThreadsPlugin(torch_threads), name="equiformer-calc-threads")

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"Dask ({self.n_workers} workers at {self.client.scheduler.address})"

    @property
    def n_workers(self) -> int:
        return len(self.client.scheduler_info(n_workers=-1)["workers"])

    def register_model(self, model: Any, device: str = "cpu", dtype: str = "float32") -> str:
        calc = as_calculator(model, device, dtype)
        key = model_key(calc)
        if key not in self._registered:
            self.client.register_plugin(ModelPlugin(calc, key, self.torch_threads), name=f"equiformer-calc-model-{key}")
            self._registered.add(key)
        return key

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], name: str = "task") -> Iterator[Outcome]:
        todo = iter(enumerate(items))
        flying: dict[str, tuple[int, float]] = {}
        futures = as_completed(with_results=True, raise_errors=False)
        live: dict[str, Any] = {}

        def submit_next() -> bool:
            nxt = next(todo, None)
            if nxt is None:
                return False
            index, item = nxt
            future = self.client.submit(fn, item, key=unique_key(name, index), pure=False)
            flying[future.key] = (index, time.perf_counter())
            live[future.key] = future
            futures.add(future)
            return True

        window = self.max_in_flight
        while (window is None or len(flying) < window) and submit_next():
            pass
        try:
            for future, result in futures:
                index, start = flying.pop(future.key)
                live.pop(future.key, None)
                seconds = time.perf_counter() - start
                # "lost": the result was fetched, then its worker died (the status moves on, the
                # value we hold is the task's return value; an error or a cancel is never "lost")
                if future.status == "finished" or (future.status == "lost" and not isinstance(result, BaseException)
                                                   and not _is_error_triple(result)):
                    outcome = Outcome(index, result, None, seconds)
                else:
                    exc = result[1] if _is_error_triple(result) else result
                    error = error_text(exc) if isinstance(exc, BaseException) else f"task {future.status}"
                    log.error("%s %d failed: %s", name, index, error)
                    outcome = Outcome(index, None, error, seconds)
                future.release()
                submit_next()
                yield outcome
        finally:
            if live:  # the consumer stopped early: nothing more should run for it
                self.client.cancel(list(live.values()))

    def close(self) -> None:
        if self.owns_client:
            cluster = getattr(self.client, "cluster", None)
            self.client.close()
            if cluster is not None:
                cluster.close()
