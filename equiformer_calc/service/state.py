"""What one server holds: the stacked predictor wrappers, the batcher, the limits, the metrics.

:func:`build_state` is the one place the service's model stack is assembled::

    Predictor                          (the model; budgets and estimates are read from it)
      -> IsolatedPredictor             (model calls in a worker process, the default for a checkpoint)
           with D3 inside the worker   (dispersion: the D3 library never runs in the server process)
      or DispersionPredictor           (D3 in this process, only when isolation is off)
      -> Batcher                       (merges concurrent requests into batched calls, one thread)

The routes (:mod:`.routes`) read the :class:`ServiceState` from ``request.app.state.service``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

from ase.data import atomic_numbers

from ..calculators.settings import ModelSettings
from ..integrations.d3 import DispersionPredictor
from ..predictor import ALL_PROPERTIES, MEMORY_HEADROOM, Predictor
from ..protocols import PredictorLike
from .batcher import Batcher
from .metrics import ServiceMetrics
from .parsing import ParserPool
from .schema import Limits
from .worker import IsolatedPredictor

__all__ = ["ServiceOptions", "ServiceState", "build_state"]

log = logging.getLogger(__name__)


@dataclass
class ServiceOptions:
    """Settings of one server (``create_app``'s keyword arguments; see :func:`~.app.create_app`). The
    model's own settings (device, dtype, memory mode and budget, D3) are not here: they are the
    :class:`~equiformer_calc.calculators.settings.ModelSettings` (or the predictor) the server is given."""

    token: str | None = None
    max_atoms_per_structure: int = 10_000
    max_atoms_per_request: int = 50_000
    max_edges_per_structure: int | None = None
    max_edges_per_request: int | None = None
    isolate: bool | None = None
    max_body_bytes: int = 16 << 20
    request_timeout_s: float = 120.0
    parse_timeout_s: float = 60.0
    parsers: int = 2
    max_batch_atoms: int = 1024
    max_wait_ms: float = 5.0
    batching: bool = True
    max_queued_requests: int = 1024
    model_id: str | None = None


class _Counter:
    """An int shared between the event loop (writer) and the batcher thread (reader)."""

    value: int = 0


@dataclass
class ServiceState:
    """Everything the routes need (built by :func:`build_state`, started and stopped by the app's
    lifespan)."""

    predictor: PredictorLike
    local: Predictor
    batcher: Batcher
    parsers: ParserPool
    metrics: ServiceMetrics
    limits: Limits
    info: dict[str, Any]
    token: str | None
    bytes_per_edge: float
    mode: str
    check_elements: Callable[[Any], None] | None = None
    #: atomic numbers of the model's elements
    known_numbers: list[int] = field(default_factory=list)
    arriving: _Counter = field(default_factory=_Counter)

    @property
    def model_ref(self) -> dict[str, Any]:
        return {"id": self.info["id"], "dtype": self.info["dtype"], "cutoff": self.info["cutoff"]}

    @property
    def where(self) -> str:
        """Where model and dispersion calls run (for the startup log)."""
        isolated = isinstance(self.predictor, IsolatedPredictor)
        model = "in a worker process" if isolated else "in this (the server's) process"
        d3 = self.info["dispersion"]
        return f"model calls {model}" + ("" if d3 == "none" else f", {d3} dispersion {model}")

    def start(self) -> None:
        """Start the parsers, the model worker and the batcher. Then import what the first small
        request would otherwise import while holding the GIL (ASE's readers: seconds), and move
        everything alive now out of the garbage collector's reach (``gc.freeze``), so that a
        collection triggered by a large request does not walk the model's objects with the GIL
        held."""
        import gc

        import ase.io  # noqa: F401

        self.parsers.start()
        if isinstance(self.predictor, IsolatedPredictor):
            self.predictor.start()  # the model is built in the worker before the first request
        self.batcher.start()
        gc.collect()
        gc.freeze()

    def stop(self, timeout_s: float) -> None:
        """Finish queued work (at most ``timeout_s``), then stop the parsers and the worker."""
        self.batcher.stop(timeout=timeout_s)
        self.parsers.stop()
        if isinstance(self.predictor, IsolatedPredictor):
            self.predictor.stop()


#: what a server can be given as its model
ModelSource = Union[Predictor, DispersionPredictor, ModelSettings, str, os.PathLike]


def _load(source: ModelSource, o: ServiceOptions) -> tuple[ModelSettings, Predictor, str | None, str, bool]:
    """(settings, the local predictor, checkpoint path, model id, isolate) of the model given to a
    server: a :class:`~equiformer_calc.calculators.settings.ModelSettings` or a checkpoint name/path
    (loaded here; its predictor splits batches at the batcher's ``max_batch_atoms``), or a
    Predictor (a D3 ``DispersionPredictor`` over one) used as is."""
    if isinstance(source, (str, os.PathLike)):
        source = ModelSettings(checkpoint=os.fspath(source))
    if isinstance(source, ModelSettings):
        settings = source.replace(max_atoms_per_batch=o.max_batch_atoms)
        settings.dispersion_term()  # the D3 names, functional and library, before the weights load
        local = settings.predictor()
        info = local.model.checkpoint
        checkpoint = info.path if info is not None else settings.checkpoint_name
        model_id = o.model_id or Path(settings.checkpoint_name).stem
        return settings, local, checkpoint, model_id, True if o.isolate is None else o.isolate
    settings = ModelSettings.of(source)  # a TypeError naming anything else
    local = source.predictor if isinstance(source, DispersionPredictor) else source
    info = local.model.checkpoint
    checkpoint = info.path if info is not None else None
    model_id = o.model_id or (Path(checkpoint).stem if checkpoint else "in-memory")
    return settings, local, checkpoint, model_id, bool(o.isolate)


def _limits(predictor: Predictor, o: ServiceOptions) -> tuple[Limits, float, str]:
    """The request limits: edge limits default to what could ever fit, the budget's ceiling in the
    leanest memory mode allowed. Returns (limits, bytes per edge, that mode)."""
    budget = predictor.memory_capacity() if hasattr(predictor, "memory_capacity") else None
    mode = str(getattr(predictor, "leanest_mode", "fast"))
    fits = predictor.call_edges(budget, ["energy", "forces"], mode) if budget is not None else 2**62
    per_edge = float(predictor.bytes_per_edge(["energy", "forces"], mode)) if budget is not None else 0.0
    limits = Limits(
        max_atoms_per_structure=int(o.max_atoms_per_structure), max_atoms_per_request=int(o.max_atoms_per_request),
        max_edges_per_structure=int(min(fits, o.max_edges_per_structure or fits)),
        max_edges_per_request=int(min(fits, o.max_edges_per_request or fits)),
        memory_budget_bytes=budget, memory_mode=str(getattr(predictor, "memory", "fast")),
        max_body_bytes=int(o.max_body_bytes), request_timeout_s=float(o.request_timeout_s),
    )
    return limits, per_edge, mode


def _stack(source: ModelSource, local: Predictor, settings: ModelSettings,
           o: ServiceOptions, isolate: bool) -> tuple[PredictorLike, Callable | None, str]:
    """The predictor wrappers: isolation (the worker rebuilds ``settings``, D3 included) or D3 in
    this process. Returns (predictor, the D3 element check or None, the dispersion's name)."""
    from ..integrations.d3 import check_d3_elements

    d3 = settings.dispersion_term()  # checks xc; computes nothing
    if isolate:
        timeout = max(float(o.request_timeout_s), 1.0) * 2
        predictor: PredictorLike = IsolatedPredictor(local, timeout_s=timeout, settings=settings)
    elif isinstance(source, DispersionPredictor):
        predictor = source  # the caller's D3 term, as given
    else:
        predictor = settings.with_dispersion(local)
    if d3 is None:
        return predictor, None, "none"
    return predictor, check_d3_elements, f"{d3.name} (xc={d3.xc})"


def _model_info(local: Predictor, model_id: str, checkpoint: str | None, limits: Limits, o: ServiceOptions,
                dispersion: str) -> dict[str, Any]:
    model = getattr(local, "model", None)
    metadata = dict(model.metadata) if model is not None else {}
    try:
        num_parameters = int(model.num_parameters()) if model is not None else None
    except Exception:  # noqa: BLE001 - informational only
        num_parameters = None
    return {
        "id": model_id, "checkpoint": checkpoint, "elements": list(local.elements), "cutoff": float(local.cutoff),
        "dtype": str(getattr(local, "dtype", "")).replace("torch.", ""), "device": str(getattr(local, "device", "")),
        "num_parameters": num_parameters, "implemented_properties": list(ALL_PROPERTIES),
        "limits": limits.model_dump(),
        "batching": {"enabled": o.batching, "max_batch_atoms": int(o.max_batch_atoms), "max_wait_ms": float(o.max_wait_ms)},
        "metadata": metadata, "dispersion": dispersion,
    }


def build_state(source: ModelSource, options: ServiceOptions) -> ServiceState:
    """Load (or take) the predictor, derive the limits, stack the wrappers, make the batcher.
    ``source``: a :class:`~equiformer_calc.calculators.settings.ModelSettings` (the model's
    settings: checkpoint, device, dtype, memory rules, D3), a checkpoint name or path, or a
    Predictor (or a D3 ``DispersionPredictor`` over one) to serve as is."""
    settings, local, checkpoint, model_id, isolate = _load(source, options)
    limits, per_edge, mode = _limits(local, options)
    predictor, check_elements, dispersion = _stack(source, local, settings, options, isolate)
    arriving = _Counter()
    metrics = ServiceMetrics(queue_depth=lambda: batcher.queue_depth)
    batcher = Batcher(
        predictor, max_batch_atoms=options.max_batch_atoms, max_wait_ms=options.max_wait_ms, enabled=options.batching,
        max_queued_requests=options.max_queued_requests,
        on_batch=lambda s: metrics.observe_batch(s.requests, s.structures, s.atoms, s.seconds, s.fallback),
        arriving=lambda: arriving.value,
    )
    return ServiceState(
        predictor=predictor, local=local, batcher=batcher,
        parsers=ParserPool(options.parsers, timeout_s=options.parse_timeout_s), metrics=metrics, limits=limits,
        info=_model_info(local, model_id, checkpoint, limits, options, dispersion), token=options.token,
        bytes_per_edge=per_edge, mode=mode, check_elements=check_elements, arriving=arriving,
        known_numbers=[atomic_numbers[symbol] for symbol in local.elements],
    )


def startup_log(state: ServiceState) -> None:
    """What the server logs once it is ready: the model, the limits and where calls run."""
    info, limits, o = state.info, state.limits, state.batcher
    budget = limits.memory_budget_bytes
    log.info("serving model %r (%s, %s, %d elements, cutoff %.2f A); batching %s", info["id"], info["dtype"],
             info["device"], len(info["elements"]), info["cutoff"],
             f"on (max {o.max_batch_atoms} atoms, {1000 * o.max_wait_s:g} ms)" if o.enabled else "off")
    log.info("limits: %s edges per structure, %s per request, memory budget %s, memory mode %s; request bodies are "
             "read in %d parser process(es) within %g s",
             f"{limits.max_edges_per_structure:,}", f"{limits.max_edges_per_request:,}",
             "none" if budget is None else f"{budget / 2**30:.3g} GiB" + (
                 f" (at most; {MEMORY_HEADROOM:.0%} of the memory available at each call)"
                 if getattr(state.local, "memory_budget", None) == "auto" else ""),
             limits.memory_mode, state.parsers.size, state.parsers.timeout_s)
    log.info("%s", state.where)

