"""Executors: run a list of tasks in-process (here) or on Dask (``_dask.py``), yielding outcomes
as they complete; the model registry of a process. :func:`~equiformer_calc.distributed.factory.open_executor`
picks one. See :mod:`equiformer_calc.distributed` for the design.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from ..calculators.base import model_fingerprint

log = logging.getLogger(__name__)

__all__ = [
    "Outcome",
    "Executor",
    "SerialExecutor",
    "model_key",
    "worker_model",
    "as_calculator",
    "error_text",
    "set_worker_model",
    "drop_worker_model",
    "unique_key",
]


#: models of this process by key: what tasks find with :func:`worker_model`
_MODELS: dict[str, Any] = {}


@dataclass
class Outcome:
    """The result of one task: ``index`` (its position in the submitted list), ``value`` (what
    the task returned; None on error), ``error`` (``"ExceptionType: message"`` when the task
    raised, or when Dask gave up on it, e.g. ``KilledWorker`` after repeated worker deaths) and
    ``seconds`` (wall time from submission to completion, seen from the client)."""

    index: int
    value: Any = None
    error: str | None = None
    seconds: float = 0.0


def error_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def model_key(calculator: Any) -> str:
    """The name a registered model has on the workers: the model's fingerprint
    (:func:`~equiformer_calc.calculators.base.model_fingerprint`: config, weights, dtype, D3 term)
    and the device, so registering the same model twice is a no-op."""
    digest = model_fingerprint(calculator)["model_hash"]
    device = calculator.parameters.get("device", "")
    return hashlib.sha256(f"{digest}|{device}".encode()).hexdigest()[:16]


def as_calculator(model: Any, device: str = "cpu", dtype: str = "float32") -> Any:
    """An EquiformerCalculator for ``model`` (a calculator is returned as is; an Equiformer, a
    Predictor, a ModelSettings or a checkpoint name is resolved by
    :func:`~equiformer_calc.calculators.local.resolve_calculator`, ``device`` / ``dtype`` applying
    where it builds the settings itself; the calculator's predictor works on its own copy of an
    Equiformer)."""
    from ..calculators.local import resolve_calculator

    calc = resolve_calculator(model, device=device, dtype=dtype)
    if not hasattr(calc, "predictor"):
        raise TypeError(f"register an EquiformerCalculator or an Equiformer model, got {type(model).__name__}")
    return calc


def set_worker_model(key: str, calculator: Any) -> None:
    """Register ``calculator`` under ``key`` in this process (what :func:`worker_model` finds)."""
    _MODELS[key] = calculator


def drop_worker_model(key: str) -> None:
    """Forget the model registered under ``key`` in this process (if any)."""
    _MODELS.pop(key, None)


def worker_model(key: str) -> Any:
    """The calculator registered under ``key`` in this process (on a Dask worker: loaded once by
    the :class:`ModelPlugin` when the worker started or the model was registered)."""
    try:
        return _MODELS[key]
    except KeyError:
        raise RuntimeError(
            f"model {key} is not loaded in this process (pid {os.getpid()}): register it with "
            "executor.register_model(...) before submitting tasks that use it"
        ) from None


class Executor:
    """Runs tasks ``fn(item)`` and yields an :class:`Outcome` per item as each completes.

    ``map`` never raises for a failing task: the failure is the outcome's ``error`` and the
    other tasks go on. Use as a context manager (``close`` releases what the executor owns).
    """

    #: a short description for logs, e.g. "in-process" or "Dask (2 workers at tcp://...)"
    description = "executor"

    def register_model(self, model: Any, device: str = "cpu", dtype: str = "float32") -> str:
        """Make ``model`` (an EquiformerCalculator, or an Equiformer to wrap in one with
        ``device`` / ``dtype``) available to tasks as ``worker_model(key)``; returns the key."""
        raise NotImplementedError

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], name: str = "task") -> Iterator[Outcome]:
        """Run ``fn`` on every item; yield outcomes as they complete (``name`` prefixes task keys)."""
        raise NotImplementedError

    @property
    def n_workers(self) -> int:
        """Worker processes (1 in-process)."""
        return 1

    def close(self) -> None:
        """Release what this executor owns (a local cluster, a client it opened)."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class SerialExecutor(Executor):
    """Every task runs in this process, one after the other, in submission order."""

    description = "in-process"

    def register_model(self, model: Any, device: str = "cpu", dtype: str = "float32") -> str:
        calc = as_calculator(model, device, dtype)
        key = model_key(calc)
        _MODELS.setdefault(key, calc)
        return key

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], name: str = "task") -> Iterator[Outcome]:
        for index, item in enumerate(items):
            start = time.perf_counter()
            try:
                value = fn(item)
            except Exception as exc:  # noqa: BLE001 - a failing task is an outcome, not the end of the run
                log.error("%s %d failed: %s", name, index, error_text(exc))
                yield Outcome(index, None, error_text(exc), time.perf_counter() - start)
                continue
            yield Outcome(index, value, None, time.perf_counter() - start)


def unique_key(name: str, index: int) -> str:
    """A Dask task key that says what the task is and is never reused (``name-000012-1f3a...``)."""
    return f"{name}-{index:06d}-{uuid.uuid4().hex[:12]}"
