"""The model in a child process: a crash in a neighbour search or a model call kills only the worker.

:class:`IsolatedPredictor` has the predictor interface the batcher needs. Validation, budgets and
model information are answered in the server process by a local :class:`~equiformer_calc.predictor.Predictor`
(cheap, no model call); ``predict`` sends the structures to a worker process that holds its own
copy of the model, built from the same :class:`~equiformer_calc.calculators.settings.ModelSettings`
(sent as JSON: weights, device, dtype, limits, committee) and, with D3 ``dispersion``, its own D3
term (:class:`~equiformer_calc.integrations.d3.DispersionPredictor`): D3 runs in the worker
too, so a crash of the D3 library is a worker crash, not a server crash. Structures and results
cross the pipe packed into a few arrays (:mod:`.packing`), so a large request does not hold the
server's GIL while it is pickled. When the worker dies (a signal, an
abort in compiled code, the kernel's OOM killer) the call raises :class:`WorkerCrashedError`
naming how it died, and a fresh worker is started for the next call; when it runs longer than
``timeout_s`` it is killed and restarted, and the call raises :class:`WorkerTimeoutError`.

Test hook: with ``EQUIFORMER_CALC_WORKER_ABORT_MARKER=<x>`` in the worker's environment, a worker
asked to evaluate a structure whose first atom has the x coordinate ``<x>`` calls ``os.abort()``
(a stand-in for a crash in compiled code; the test suite uses it against a real server).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Sequence

from ..calculators.settings import ModelSettings
from ..graph import Structure
from ..integrations.d3 import DispersionPredictor
from ..predictor import Predictor
from .packing import pack_results, pack_structures, unpack_results, unpack_structures

__all__ = ["IsolatedPredictor", "WorkerCrashedError", "WorkerTimeoutError", "ABORT_MARKER_ENV"]

log = logging.getLogger(__name__)

ABORT_MARKER_ENV = "EQUIFORMER_CALC_WORKER_ABORT_MARKER"


class WorkerCrashedError(RuntimeError):
    """The worker process died while evaluating; the message says how. A new one was started."""


class WorkerTimeoutError(TimeoutError):
    """The worker did not answer within its time limit; it was killed and a new one started."""


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _spec_of(predictor: Predictor, settings: ModelSettings) -> dict[str, Any]:
    """What a worker needs to rebuild the evaluator: the model (config, weights as safetensors bytes,
    checkpoint information), torch's thread count, and the settings as JSON
    (:meth:`~equiformer_calc.calculators.settings.ModelSettings.to_dict`)."""
    from safetensors.torch import save
    import torch

    model = predictor.model
    return {
        "config": model.config.to_dict(),
        "weights": save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}),
        "checkpoint": model.checkpoint,
        "threads": torch.get_num_threads(),
        "settings": json.dumps(settings.to_dict()),
    }


def _worker_main(conn: Connection, spec: dict[str, Any]) -> None:  # pragma: no cover - runs in the child
    """The worker loop: build the predictor, then answer (structures, properties) messages."""
    from safetensors.torch import load

    from ..model import Equiformer
    from ..runtime import set_threads

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server handles Ctrl-C and stops us
    set_threads(int(spec["threads"]))
    model = Equiformer.from_config(spec["config"])
    model.load_state_dict(load(spec["weights"]))
    model.checkpoint = spec["checkpoint"]
    settings = ModelSettings.from_dict(json.loads(spec["settings"]))
    # the same settings as the server's predictor (its committee too); D3 in this process, so a
    # crash of its library is a worker crash
    predictor = settings.with_dispersion(settings.predictor(model, copy_model=False))
    marker = os.environ.get(ABORT_MARKER_ENV)
    abort_at = float(marker) if marker else None
    conn.send(("ready", os.getpid()))

    def handle(message: Any) -> tuple[str, Any]:
        packed, properties = message
        structures = unpack_structures(packed)
        if abort_at is not None and any(len(s) and s.positions[0, 0] == abort_at for s in structures):
            os.abort()
        return ("ok", pack_results(predictor.predict(structures, properties)))

    serve_pipe(conn, handle)


def serve_pipe(conn: Connection, handle: Callable[[Any], tuple[str, Any]]) -> None:  # pragma: no cover - children
    """A child process's loop: answer each message from ``conn`` with ``handle(message)`` (an
    exception is sent back as ``("error", exc)``) until the parent sends None or goes away."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        try:
            reply = handle(message)
        except Exception as exc:  # noqa: BLE001 - every error goes back to the request
            reply = ("error", exc)
        try:
            conn.send(reply)
        except Exception as exc:  # noqa: BLE001 - an unpicklable exception
            conn.send(("error", RuntimeError(f"{type(reply[1]).__name__}: {reply[1]} ({exc})")))


class IsolatedPredictor:
    """A :class:`Predictor` whose model calls run in a worker process (see the module docstring).

    ``predictor`` is the local predictor (validation, estimates, model information; its model is
    copied into the worker), or a D3 ``DispersionPredictor`` over one. ``settings``: the
    :class:`~equiformer_calc.calculators.settings.ModelSettings` the worker builds its predictor with
    (its D3 term included; default: those of ``predictor``,
    :meth:`~equiformer_calc.calculators.settings.ModelSettings.of`). ``timeout_s``: longest model call before the worker is killed
    (``None``: no limit). ``start_timeout_s``: how long a worker may take to start.
    """

    def __init__(self, predictor: Any, timeout_s: float | None = None, start_timeout_s: float = 300.0,
                 settings: ModelSettings | None = None) -> None:
        self.settings = settings if settings is not None else ModelSettings.of(predictor)
        self.local: Predictor = predictor.predictor if isinstance(predictor, DispersionPredictor) else predictor
        self.timeout_s = timeout_s
        self.start_timeout_s = float(start_timeout_s)
        self.restarts = 0
        self.crashes = 0
        self._spec = _spec_of(self.local, self.settings)
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ what the server reads
    @property
    def elements(self) -> list[str]:
        return self.local.elements

    @property
    def cutoff(self) -> float:
        return self.local.cutoff

    @property
    def dtype(self) -> Any:
        return self.local.dtype

    @property
    def device(self) -> Any:
        return self.local.device

    @property
    def model(self) -> Any:
        return self.local.model

    @property
    def max_atoms_per_batch(self) -> int:
        return self.local.max_atoms_per_batch

    def to_structure(self, item: Any) -> Structure:
        return self.local.to_structure(item)

    def graph(self, structure: Structure) -> Any:
        """Not here: neighbour searches run only in the worker (errors come back located)."""
        raise NotImplementedError("graphs are built in the model worker")

    @property
    def worker_pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the worker (if not running) and wait until it has built its model."""
        with self._lock:
            self._ensure_started()

    def _ensure_started(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_worker_main, args=(child, self._spec), name="equiformer-worker",
                                        daemon=True)
        process.start()
        child.close()
        ready = wait([parent, process.sentinel], timeout=self.start_timeout_s)
        if parent not in ready:
            process.kill()
            process.join(10)
            raise WorkerCrashedError(f"the model worker {_describe_exit(process.exitcode)} while starting")
        try:
            kind, pid = parent.recv()
        except EOFError:
            process.join(10)
            raise WorkerCrashedError(f"the model worker {_describe_exit(process.exitcode)} while starting") from None
        self._process, self._conn = process, parent
        log.info("model worker started (pid %d)", pid)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the worker to exit; kill it if it does not."""
        with self._lock:
            self._stop(timeout)

    def _stop(self, timeout: float = 10.0) -> None:
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if process is None:
            return
        try:
            if conn is not None:
                conn.send(None)
        except (OSError, ValueError):
            pass
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join(timeout)
        if conn is not None:
            conn.close()

    def _restart(self) -> None:
        self._stop(timeout=1.0)
        self.restarts += 1
        try:
            self._ensure_started()
        except WorkerCrashedError:
            log.exception("could not restart the model worker; the next request tries again")

    # ------------------------------------------------------------------ model calls
    def predict(self, structures: Sequence[Structure], properties: Sequence[str] = ("energy", "forces")) -> list[dict]:
        """Evaluate in the worker; errors of the predictor come back as themselves."""
        with self._lock:
            self._ensure_started()
            assert self._conn is not None and self._process is not None
            conn, process = self._conn, self._process
            start = time.monotonic()
            conn.send((pack_structures(list(structures)), list(properties)))
            ready = wait([conn, process.sentinel], timeout=self.timeout_s)
            reply = None
            if conn in ready:
                try:
                    reply = conn.recv()
                except (EOFError, OSError):
                    reply = None
            if reply is None:
                if not ready:
                    process.kill()
                    process.join(10)
                    self._restart()
                    raise WorkerTimeoutError(
                        f"the model worker did not answer within {self.timeout_s:g} s and was restarted"
                    )
                process.join(10)
                how = _describe_exit(process.exitcode)
                self.crashes += 1
                log.error("model worker (pid %s) %s while evaluating %d structure(s) after %.1f s; restarting it",
                          process.pid, how, len(structures), time.monotonic() - start)
                self._restart()
                raise WorkerCrashedError(f"the model worker process {how} while evaluating this request; "
                                         f"a new worker was started and the server keeps serving")
        kind, payload = reply
        if kind == "error":
            raise payload
        return unpack_results(payload)
