"""Which executor a workflow gets: :func:`open_executor` (serial, a Dask scheduler, a local Dask
cluster or a given client). Dask is imported only when asked for, so the serial path works
without the ``[distributed]`` extra."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator

from .executor import Executor, SerialExecutor

__all__ = ["open_executor", "DASK_MISSING", "DaskExecutor", "ModelPlugin"]

log = logging.getLogger(__name__)

DASK_MISSING = (
    "running on Dask (--scheduler / --workers, or a dask Client) needs the [distributed] extra: "
    "pip install 'equiformer-calc[distributed]' (dask and distributed)"
)


def _require_dask() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise ImportError(DASK_MISSING) from exc


def __getattr__(name: str) -> Any:  # lazy: ModelPlugin / DaskExecutor need distributed
    if name in ("ModelPlugin", "DaskExecutor"):
        _require_dask()
        from . import _dask

        return getattr(_dask, name)
    raise AttributeError(name)


@contextlib.contextmanager
def open_executor(
    scheduler: str | None = None,
    workers: int | None = None,
    client: Any = None,
    torch_threads: int | None = None,
) -> Iterator[Executor]:
    """The executor a workflow should use.

    client: an existing ``dask.distributed.Client`` (left open). scheduler: a scheduler address
    such as ``tcp://HOST:8786`` (a client is opened and closed here). workers: a LocalCluster of
    that many worker processes, one task at a time each, torch threads = cores // workers (closed
    at the end). None of them: :class:`SerialExecutor`. torch_threads: intra-op threads of every
    worker's torch (default: cores // workers for a local cluster; left alone otherwise, where
    Dask's nanny starts workers with ``OMP_NUM_THREADS=1``).
    """
    given = [x is not None for x in (client, scheduler, workers)]
    if sum(given) > 1:
        raise ValueError("give at most one of client, scheduler and workers")
    if workers is not None and int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not any(given):
        yield SerialExecutor()
        return
    _require_dask()
    from ._dask import DaskExecutor, local_cluster_client

    if client is not None:
        executor = DaskExecutor(client, torch_threads=torch_threads)
    elif scheduler is not None:
        from distributed import Client

        executor = DaskExecutor(Client(scheduler), torch_threads=torch_threads, owns_client=True)
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = torch_threads or max(1, cores // int(workers))
        executor = DaskExecutor(local_cluster_client(int(workers)), torch_threads=threads, owns_client=True)
    log.info("executor: %s", executor.description)
    try:
        yield executor
    finally:
        executor.close()

