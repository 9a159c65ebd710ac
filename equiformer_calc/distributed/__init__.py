"""The executor seam: the same workflows run in-process or fan out on Dask.

A fan-out workflow (screening, labelling, evaluation, batch prediction) cuts its work into
*tasks* (each a batch: a chunk of relaxations, a group of model batches, one labelling system),
hands them to an :class:`Executor` and consumes the outcomes on the client as they complete.
The client alone writes results (database rows, shards, output files); workers only compute.

* :class:`SerialExecutor` runs each task in this process, in order.
* :class:`DaskExecutor` submits tasks to a ``dask.distributed.Client``: a running cluster
  (``--scheduler tcp://HOST:8786``, started with ``dask scheduler`` + ``dask worker`` or
  dask-jobqueue) or a :class:`~distributed.LocalCluster` of ``--workers N`` processes. A worker
  that dies takes no result with it: the scheduler reruns its tasks on the others.

Models are loaded once per worker process, not once per task: :meth:`Executor.register_model`
sends the model (its weights, or a checkpoint path read on the worker) to every worker through a
:class:`ModelPlugin`, which also sets the worker's torch threads; tasks look it up with
:func:`worker_model`. Dask is an optional extra (``pip install equiformer-calc[distributed]``);
nothing here imports it until a Dask executor is asked for.
"""

from typing import Any

from .executor import (
    Executor,
    Outcome,
    SerialExecutor,
    model_key,
    worker_model,
)
from .factory import open_executor

__all__ = [
    "Executor",
    "SerialExecutor",
    "DaskExecutor",
    "Outcome",
    "ModelPlugin",
    "model_key",
    "worker_model",
    "open_executor",
]


def __getattr__(name: str) -> Any:  # DaskExecutor / ModelPlugin import distributed: only on use
    if name in ("DaskExecutor", "ModelPlugin"):
        from . import factory

        return getattr(factory, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
