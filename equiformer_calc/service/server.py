"""HTTP inference service: a FastAPI app over one :class:`~equiformer_calc.predictor.Predictor`.

Endpoints (all JSON except ``/metrics``; errors are ``{"error": {"type": ..., "message": ...}}``):

* ``POST /v1/predict`` -- structures as JSON (``{"structures": [...], "properties": [...]}``), as a
  JSON field ``"extxyz"``, or as an extxyz body (``Content-Type: chemical/x-extxyz`` or
  ``text/plain``; properties then come from the ``properties`` query parameter). Answers energy
  (eV), forces (eV/A), stress (6 Voigt components, eV/A^3, ASE sign convention) and per-atom
  energies, one result per structure, in input order.
* ``GET /health`` -- liveness (never needs the token).
* ``GET /v1/models`` -- the served checkpoint: metadata, elements, cutoff, dtype, limits.
* ``GET /metrics`` -- Prometheus text format.

Every structure is validated on the event loop before it is queued; concurrent requests are
merged into batched model calls by :class:`~equiformer_calc.service.batcher.Batcher`, which runs
the model in a single worker thread. ``equiformer-calc serve`` runs the app with uvicorn; SIGTERM /
SIGINT stop accepting connections, let in-flight requests finish, then stop the worker.
"""

from __future__ import annotations

import argparse
import hmac
import io
import json
import logging
import os
import signal
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Literal, Sequence

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..calculators.dispersion import add_dispersion_arguments
from ..graph import BudgetError, Structure, StructureError, estimate_edges
from ..model import UnknownElementError
from ..predictor import ALL_PROPERTIES, MEMORY_HEADROOM, MemoryBudgetError, Predictor
from .batcher import Batcher, BatcherClosedError, QueueFullError, RequestTimeoutError
from .metrics import ServiceMetrics
from .worker import IsolatedPredictor, WorkerCrashedError, WorkerTimeoutError

__all__ = ["HELP", "ApiError", "PredictRequest", "PredictResponse", "create_app", "add_arguments", "run"]

log = logging.getLogger(__name__)

HELP = "serve a checkpoint over HTTP (POST /v1/predict) with dynamic batching"

#: Content-Types read as extxyz text
EXTXYZ_TYPES = {"chemical/x-extxyz", "chemical/x-xyz", "text/x-extxyz", "text/plain"}
#: an over-limit body is still read (and discarded) up to this many extra bytes, so the client
#: gets the 413 instead of a connection reset
_DRAIN_BYTES = 16 << 20
_PATHS = ("/health", "/v1/predict", "/v1/models", "/metrics", "/docs", "/openapi.json")

Property = Literal["energy", "free_energy", "energies", "forces", "stress"]


# ---------------------------------------------------------------------------------- schemas
#: an integer in a range numpy holds exactly (values outside 1..118 get the element error)
AtomicNumber = Annotated[int, Field(ge=-(2**31), le=2**31)]


class StructureIn(BaseModel):
    """One structure. Give ``numbers`` (atomic numbers) or ``symbols``; positions in Angstrom;
    ``cell`` rows are lattice vectors (or three lengths of an orthorhombic cell); ``pbc`` one
    bool or three."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,  # JSON types as declared: no booleans as numbers, no numbers as booleans
        json_schema_extra={
            "example": {"numbers": [8, 1, 1], "positions": [[0, 0, 0.119], [0, 0.763, -0.477], [0, -0.763, -0.477]],
                        "cell": None, "pbc": False}
        },
    )

    numbers: list[AtomicNumber] | None = Field(None, description="atomic numbers, length N")
    symbols: list[str] | None = Field(None, description="chemical symbols, length N (instead of numbers)")
    positions: list[list[float]] = Field(description="Cartesian positions in Angstrom, shape (N, 3)")
    cell: list[list[float]] | list[float] | None = Field(None, description="3x3 lattice vectors (rows) or 3 lengths")
    pbc: bool | list[bool] = Field(False, description="periodicity: one bool or three")


class PredictRequest(BaseModel):
    """Structures to evaluate (``structures`` or an ``extxyz`` string) and the properties wanted."""

    model_config = ConfigDict(extra="forbid", strict=True)

    structures: list[StructureIn] | None = Field(None, description="structures, evaluated in this order")
    extxyz: str | None = Field(None, description="extended-XYZ text with one or more frames (instead of structures)")
    properties: list[Property] = Field(
        default_factory=lambda: ["energy", "forces"],  # type: ignore[arg-type]
        description="energy is always returned; stress needs 3D-periodic structures",
    )


class PredictionOut(BaseModel):
    """Results of one structure (ASE units and conventions)."""

    energy: float = Field(description="eV")
    free_energy: float | None = Field(None, description="eV (equal to energy)")
    forces: list[list[float]] | None = Field(None, description="eV/Angstrom, shape (N, 3)")
    stress: list[float] | None = Field(None, description="eV/Angstrom^3, Voigt order xx yy zz yz xz xy")
    energies: list[float] | None = Field(None, description="per-atom energies in eV, summing to energy")


class ModelRef(BaseModel):
    id: str
    dtype: str
    cutoff: float


class PredictResponse(BaseModel):
    results: list[PredictionOut]
    model: ModelRef


class ModelInfo(BaseModel):
    """The served model."""

    id: str
    checkpoint: str | None
    elements: list[str]
    cutoff: float
    dtype: str
    device: str
    num_parameters: int | None
    implemented_properties: list[str]
    limits: dict[str, Any]
    batching: dict[str, Any]
    metadata: dict[str, Any]
    dispersion: str = "none"


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class HealthResponse(BaseModel):
    status: str
    model: str
    uptime_s: float
    queue_depth: int


class ErrorDetail(BaseModel):
    type: str = Field(description="machine-readable kind, e.g. invalid_structure, unknown_element, too_large")
    message: str = Field(description="what is wrong, naming the structure / field at fault")


class ErrorResponse(BaseModel):
    error: ErrorDetail


_FIELD_NAMES = set(StructureIn.model_fields) | set(PredictRequest.model_fields)


# ---------------------------------------------------------------------------------- errors
class ApiError(Exception):
    """An error answered to the client as ``{"error": {"type", "message"}}`` with ``status``."""

    def __init__(self, status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.headers = headers


_STATUS_TYPES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                 413: "too_large", 415: "unsupported_media_type", 422: "invalid_request", 500: "internal", 503: "unavailable",
                 504: "timeout", 507: "insufficient_memory"}


def _format_validation_error(exc: ValidationError | RequestValidationError) -> str:
    """'structures[0].positions[1][2]: Input should be a valid number; ...' (first few problems)."""
    errors = list(exc.errors())
    # a value that fails every member of a union (cell: 3x3 | 3 lengths; pbc: bool | 3 bools) is
    # reported once, against its main form
    secondary = {"list[float]", "bool"}
    main = [e for e in errors if not secondary.intersection(str(x) for x in e.get("loc", ()))]
    errors = main or errors
    messages: list[str] = []
    for err in errors:
        loc = list(err.get("loc", ()))
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "extra_forbidden" and loc:
            msg = f"unknown field {loc.pop()!r}"
        parts: list[str] = []
        for item in loc:
            if isinstance(item, int):
                parts.append(f"[{item}]")
            elif item in _FIELD_NAMES:
                parts.append(("." if parts else "") + item)
            # other strings are union-member tags such as 'list[float]' or 'body': skip them
        where = "".join(parts) or "request"
        text = f"{where}: {msg}"
        if text not in messages:
            messages.append(text)
    shown = "; ".join(messages[:4])
    if len(messages) > 4:
        shown += f"; and {len(messages) - 4} more"
    return shown


# ---------------------------------------------------------------------------------- parsing
def _numbers_of(k: int, s: StructureIn) -> list[int]:
    if s.numbers is not None and s.symbols is not None:
        raise ApiError(422, "invalid_request", f"structure {k}: give either 'numbers' or 'symbols', not both")
    if s.numbers is not None:
        return s.numbers
    if s.symbols is None:
        raise ApiError(422, "invalid_request", f"structure {k}: 'numbers' (atomic numbers) or 'symbols' is required")
    from ase.data import atomic_numbers

    bad = [sym for sym in s.symbols if sym not in atomic_numbers or sym == "X"]
    if bad:
        raise ApiError(422, "invalid_structure", f"structure {k}: unknown chemical symbol(s) {sorted(set(bad))}")
    return [atomic_numbers[sym] for sym in s.symbols]


def _read_extxyz(text: str) -> list[tuple[Any, Any, Any, Any]]:
    """extxyz text -> (numbers, positions, cell, pbc) per frame."""
    from ase.io import read

    if not text.strip():
        raise ApiError(400, "invalid_extxyz", "the extxyz input is empty")
    try:
        images = read(io.StringIO(text), index=":", format="extxyz")
    except Exception as exc:  # noqa: BLE001 - ase raises many types for malformed files
        message = f"could not parse the extxyz input: {type(exc).__name__}: {exc}"
        raise ApiError(400, "invalid_extxyz", message) from None
    if not isinstance(images, list):
        images = [images]
    if not images:
        raise ApiError(400, "invalid_extxyz", "the extxyz input holds no structure")
    return [(a.get_atomic_numbers(), a.get_positions(), a.cell.array, a.pbc) for a in images]


class Limits(BaseModel):
    """Request limits of one server."""

    max_atoms_per_structure: int
    max_atoms_per_request: int
    max_edges_per_structure: int
    max_edges_per_request: int
    #: the most memory one model call may get (``memory_budget``, or for "auto" 80% of the device's
    #: memory; the memory available at the time may be less: 507); None: no limit
    memory_budget_bytes: int | None
    #: memory mode of the model calls: "auto", "fast" or "low"
    memory_mode: str
    max_body_bytes: int
    request_timeout_s: float


def _check_sizes(sizes: Sequence[int], limits: Limits) -> None:
    if not sizes:
        raise ApiError(422, "invalid_request", "no structures given: 'structures' is empty")
    for k, n in enumerate(sizes):
        if n > limits.max_atoms_per_structure:
            raise ApiError(413, "too_large", f"structure {k} has {n} atoms; this server accepts at most "
                                             f"{limits.max_atoms_per_structure} atoms per structure")
    total = sum(sizes)
    if total > limits.max_atoms_per_request:
        raise ApiError(413, "too_large", f"the request has {total} atoms in {len(sizes)} structures; this server "
                                         f"accepts at most {limits.max_atoms_per_request} atoms per request")


def _check_edges(structures: Sequence[Structure], cutoff: float, limits: Limits, bytes_per_edge: float,
                 mode: str = "fast") -> None:
    """413 for a structure or a request whose estimated edge count is over its limit (the estimate
    is cheap: no neighbour search; see :func:`~equiformer_calc.graph.estimate_edges`)."""
    budget = "" if limits.memory_budget_bytes is None else (
        f" (the server's memory budget of {limits.memory_budget_bytes / 2**30:.3g} GiB at about "
        f"{bytes_per_edge / 1024:.1f} KiB per edge in memory='{mode}' mode)")
    total = 0
    for k, structure in enumerate(structures):
        try:
            edges = estimate_edges(structure, cutoff)
        except StructureError as exc:
            raise StructureError(f"structure {k}: {exc}") from None
        if edges > limits.max_edges_per_structure:
            raise ApiError(413, "too_large", f"structure {k} ({len(structure)} atoms) makes about {edges:,} edges "
                                             f"with the {cutoff:g} A cutoff; this server accepts at most "
                                             f"{limits.max_edges_per_structure:,} edges per structure{budget}")
        total += edges
    if total > limits.max_edges_per_request:
        raise ApiError(413, "too_large", f"the request's {len(structures)} structures make about {total:,} edges; "
                                         f"this server accepts at most {limits.max_edges_per_request:,} edges per "
                                         f"request{budget}")


def _validate(predictor: Any, raw: Sequence[tuple[Any, Any, Any, Any]]) -> list[Structure]:
    """Arrays -> validated structures with supported elements, or a 422 naming the structure."""
    out: list[Structure] = []
    for k, (numbers, positions, cell, pbc) in enumerate(raw):
        try:
            structure = Structure.from_arrays(numbers, positions, cell, pbc)
            out.append(predictor.to_structure(structure))
        except UnknownElementError as exc:
            raise ApiError(422, "unknown_element", f"structure {k}: {exc}") from None
        except StructureError as exc:
            raise ApiError(422, "invalid_structure", f"structure {k}: {exc}") from None
    return out


def _parse_properties(values: Sequence[str]) -> list[str]:
    props: list[str] = []
    for value in values:
        props += [p.strip() for p in value.split(",") if p.strip()]
    unknown = [p for p in props if p not in ALL_PROPERTIES]
    if unknown:
        raise ApiError(422, "invalid_request", f"unknown properties {unknown}; available: {list(ALL_PROPERTIES)}")
    return props or ["energy", "forces"]


def _result_json(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in result.items():
        out[key] = float(value) if key in ("energy", "free_energy") else np.asarray(value, dtype=np.float64).tolist()
    return out


def _json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(payload).encode(), status_code=status, media_type="application/json", headers=headers)


# ---------------------------------------------------------------------------------- metrics middleware
class _MetricsMiddleware:
    """Counts requests by path and status, and times POST /v1/predict (pure ASGI)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = scope.get("path", "")
            label = path if path in _PATHS else "other"
            self.metrics.requests.labels(path=label, status=str(status)).inc()
            if label == "/v1/predict" and scope.get("method") == "POST":
                self.metrics.latency.observe(time.perf_counter() - start)


# ---------------------------------------------------------------------------------- app
class _Counter:
    """An int shared between the event loop (writer) and the batcher thread (reader)."""

    value: int = 0


def _model_info(
    predictor: Any, model_id: str, checkpoint: str | None, limits: Limits, batcher: Batcher
) -> dict[str, Any]:
    model = getattr(predictor, "model", None)
    metadata = dict(model.metadata) if model is not None else {}
    try:
        num_parameters = int(model.num_parameters()) if model is not None else None
    except Exception:  # noqa: BLE001 - informational only
        num_parameters = None
    return {
        "id": model_id,
        "checkpoint": checkpoint,
        "elements": list(predictor.elements),
        "cutoff": float(predictor.cutoff),
        "dtype": str(getattr(predictor, "dtype", "")).replace("torch.", ""),
        "device": str(getattr(predictor, "device", "")),
        "num_parameters": num_parameters,
        "implemented_properties": list(ALL_PROPERTIES),
        "limits": limits.model_dump(),
        "batching": {"enabled": batcher.enabled, "max_batch_atoms": batcher.max_batch_atoms,
                     "max_wait_ms": 1000.0 * batcher.max_wait_s},
        "metadata": metadata,
        "dispersion": str(getattr(predictor, "d3", None) or "none"),
    }


def create_app(
    predictor_or_checkpoint: Predictor | str | os.PathLike,
    *,
    token: str | None = None,
    max_atoms_per_structure: int = 10_000,
    max_atoms_per_request: int = 50_000,
    max_edges_per_structure: int | None = None,
    max_edges_per_request: int | None = None,
    memory_budget: int | str | None = "auto",
    isolate: bool | None = None,
    max_body_bytes: int = 16 << 20,
    request_timeout_s: float = 120.0,
    max_batch_atoms: int = 1024,
    max_wait_ms: float = 5.0,
    batching: bool = True,
    max_queued_requests: int = 1024,
    device: str = "cpu",
    dtype: str = "float32",
    model_id: str | None = None,
    dispersion: str | None = None,
    xc: str = "pbe",
    memory: str = "auto",
) -> FastAPI:
    """The FastAPI app serving one model.

    ``predictor_or_checkpoint`` is a :class:`Predictor` (used as is) or a checkpoint name/path
    (loaded on ``device`` in ``dtype``, batched by ``max_batch_atoms``). ``token`` enables bearer
    authentication on every endpoint except ``/health`` and the API docs. Bodies over
    ``max_body_bytes`` and structures/requests over the atom limits are answered 413; a request
    not answered within ``request_timeout_s`` gets 504. ``batching=False`` runs every request in
    its own model call (still one at a time). ``dispersion`` (e.g. ``"d3bj"``, for the functional
    ``xc``) adds D3 to every energy, force and stress (per-atom energies stay model-only).

    Memory: ``memory`` is the predictor's memory mode ("auto", "fast", "low") and ``memory_budget``
    the limit of one model call (bytes; ``"auto"``: 80% of the memory available when the call
    starts, see :class:`~equiformer_calc.predictor.Predictor`). ``max_edges_per_structure`` and
    ``max_edges_per_request`` default to what could ever fit: the budget (for "auto", 80% of all
    the device's memory, :meth:`~equiformer_calc.predictor.Predictor.memory_capacity`) in the
    leanest memory mode allowed; estimates over them get 413 naming the estimate and the limit. An
    admitted call that does not fit the memory available at the time is answered 507
    ``insufficient_memory`` with the estimate, before the model runs, and the server keeps serving.

    Isolation: with ``isolate`` (default: on when a checkpoint is given, off for a Predictor object,
    which may not be copyable) the model runs in a worker process
    (:class:`~equiformer_calc.service.worker.IsolatedPredictor`); if it dies, the request gets 500
    ``worker_crashed``, a new worker starts and the server keeps serving.
    """
    from ..checkpoint import load_checkpoint

    checkpoint: str | None = None
    if isinstance(predictor_or_checkpoint, (str, os.PathLike)):
        model = load_checkpoint(predictor_or_checkpoint, device=device)
        predictor: Any = Predictor(model, device=device, dtype=dtype, max_atoms_per_batch=max_batch_atoms,
                                   memory_budget=memory_budget, memory=memory, copy_model=False)
        checkpoint = model.checkpoint.path if model.checkpoint is not None else str(predictor_or_checkpoint)
        model_id = model_id or Path(str(predictor_or_checkpoint)).stem
        isolate = True if isolate is None else isolate
    else:
        predictor = predictor_or_checkpoint
        info = getattr(getattr(predictor, "model", None), "checkpoint", None)
        checkpoint = info.path if info is not None else None
        model_id = model_id or (Path(checkpoint).stem if checkpoint else "in-memory")
    # edge limits that no call over could ever fit: the budget's ceiling in the leanest mode allowed
    budget = predictor.memory_capacity() if hasattr(predictor, "memory_capacity") else None
    mode = str(getattr(predictor, "leanest_mode", "fast"))
    fits = predictor.call_edges(budget, ["energy", "forces"], mode) if budget is not None else 2**62
    per_edge = float(predictor.bytes_per_edge(["energy", "forces"], mode)) if budget is not None else 0.0
    limits = Limits(
        max_atoms_per_structure=int(max_atoms_per_structure), max_atoms_per_request=int(max_atoms_per_request),
        max_edges_per_structure=int(min(fits, max_edges_per_structure or fits)),
        max_edges_per_request=int(min(fits, max_edges_per_request or fits)),
        memory_budget_bytes=budget, memory_mode=str(getattr(predictor, "memory", "fast")),
        max_body_bytes=int(max_body_bytes), request_timeout_s=float(request_timeout_s),
    )
    if isolate:
        predictor = IsolatedPredictor(predictor, timeout_s=max(float(request_timeout_s), 1.0) * 2)
    # D3 wraps the (isolated) model predictor: the worker recreates only the model, so the term is added here
    if dispersion is not None and dispersion.lower() != "none":
        from ..calculators.dispersion import D3, DispersionPredictor

        predictor = DispersionPredictor(predictor, D3(dispersion, xc=xc))
    metrics = ServiceMetrics(queue_depth=lambda: batcher.queue_depth)
    # predict requests received and not yet queued (changed on the event loop, read by the worker)
    arriving = _Counter()
    batcher = Batcher(
        predictor, max_batch_atoms=max_batch_atoms, max_wait_ms=max_wait_ms, enabled=batching,
        max_queued_requests=max_queued_requests,
        on_batch=lambda s: metrics.observe_batch(s.requests, s.structures, s.atoms, s.seconds, s.fallback),
        arriving=lambda: arriving.value,
    )
    info = _model_info(predictor, model_id, checkpoint, limits, batcher)
    model_ref = {"id": model_id, "dtype": info["dtype"], "cutoff": info["cutoff"]}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if isinstance(predictor, IsolatedPredictor):
            predictor.start()  # the model is built in the worker before the first request
        batcher.start()
        log.info("serving model %r (%s, %s, %d elements, cutoff %.2f A); batching %s",
                 model_id, info["dtype"], info["device"], len(info["elements"]), info["cutoff"],
                 f"on (max {max_batch_atoms} atoms, {max_wait_ms} ms)" if batching else "off")
        log.info("limits: %s edges per structure, %s per request, memory budget %s, memory mode %s; model calls %s",
                 f"{limits.max_edges_per_structure:,}", f"{limits.max_edges_per_request:,}",
                 "none" if budget is None else f"{budget / 2**30:.3g} GiB" + (
                     f" (at most; {MEMORY_HEADROOM:.0%} of the memory available at each call)"
                     if getattr(predictor, "memory_budget", None) == "auto" else ""),
                 limits.memory_mode,
                 "in a worker process" if isinstance(predictor, IsolatedPredictor) else "in this process")
        try:
            yield
        finally:
            log.info("shutting down: finishing %d queued request(s)", batcher.queue_depth)
            batcher.stop(timeout=max(request_timeout_s, 1.0))
            if isinstance(predictor, IsolatedPredictor):
                predictor.stop()

    app = FastAPI(
        title="equiformer-calc inference service",
        version=_version(),
        description="Energies, forces and stress of an Equiformer interatomic potential (eV, Angstrom).",
        lifespan=lifespan,
        responses={401: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
    )
    app.state.predictor = predictor
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.limits = limits
    app.add_middleware(_MetricsMiddleware, metrics=metrics)  # type: ignore[arg-type]

    def error_response(status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> Response:
        metrics.errors.labels(type=type_).inc()
        if status >= 500:
            log.warning("%d %s: %s", status, type_, message)
        else:
            log.info("%d %s: %s", status, type_, message)
        return _json_response({"error": {"type": type_, "message": message}}, status=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> Response:
        return error_response(exc.status, exc.type, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no endpoint {request.url.path}; see /docs"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, _STATUS_TYPES.get(exc.status_code, "http_error"), message,
                              getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
        return error_response(422, "invalid_request", _format_validation_error(exc))

    @app.exception_handler(Exception)
    async def _internal_error(_request: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal", f"internal server error: {type(exc).__name__}: {exc}")

    bearer = HTTPBearer(auto_error=False, description="the server's token (--token / EQUIFORMER_CALC_TOKEN)")

    async def authorize(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if token is None:
            return
        if credentials is None:
            message = "missing bearer token: send 'Authorization: Bearer <token>'"
        elif not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            message = "invalid bearer token"
        else:
            return
        await drain_body(request)  # so that a client still sending its body reads the 401
        raise ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})

    async def drain_body(request: Request) -> None:
        """Read and drop a request body of acceptable size (not one declared far over the limit)."""
        declared = request.headers.get("content-length", "")
        cap = limits.max_body_bytes + _DRAIN_BYTES
        if request.method != "POST" or (declared.isdigit() and int(declared) > cap):
            return
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                return

    @app.get("/health", response_model=HealthResponse, tags=["service"])
    async def health() -> dict[str, Any]:
        """Liveness: answers as long as the server accepts requests (no token needed)."""
        return {"status": "ok", "model": model_id, "uptime_s": time.time() - metrics.started,
                "queue_depth": batcher.queue_depth}

    @app.get("/v1/models", response_model=ModelsResponse, dependencies=[Depends(authorize)], tags=["model"])
    async def models() -> dict[str, Any]:
        """The served checkpoint: metadata, elements, cutoff, dtype, request limits, batching."""
        return {"models": [info]}

    @app.get("/metrics", dependencies=[Depends(authorize)], tags=["service"],
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    async def prometheus(request: Request) -> Response:
        """Request / error counters, batch-size and latency histograms, process metrics (Prometheus
        text format, or OpenMetrics when the scraper asks for it)."""
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type})

    async def read_body(request: Request) -> bytes:
        limit = limits.max_body_bytes
        declared = request.headers.get("content-length", "")
        too_large = declared.isdigit() and int(declared) > limit
        if too_large and int(declared) > limit + _DRAIN_BYTES:
            raise ApiError(413, "too_large", f"request body of {declared} bytes exceeds the limit of {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if too_large or size > limit:
                too_large = True
                if size > limit + _DRAIN_BYTES:
                    break
                continue  # read and drop the rest so the client sees the answer
            chunks.append(chunk)
        if too_large:
            raise ApiError(413, "too_large", f"request body of {declared or f'more than {limit}'} bytes exceeds "
                                             f"the limit of {limit} bytes")
        return b"".join(chunks)

    def parse_request(request: Request, body: bytes) -> tuple[list[Structure], list[str]]:
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if not body.strip():
            raise ApiError(400, "invalid_json" if content_type not in EXTXYZ_TYPES else "invalid_extxyz",
                           "the request body is empty")
        if content_type in EXTXYZ_TYPES:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ApiError(400, "invalid_extxyz", f"the extxyz body is not UTF-8 text ({exc})") from None
            properties = _parse_properties(request.query_params.getlist("properties"))
            raw = _read_extxyz(text)
            _check_sizes([len(r[0]) for r in raw], limits)
            return validated(raw), properties
        # curl's -d default (form-urlencoded) is read as JSON too
        json_types = ("application/json", "application/x-www-form-urlencoded")
        if content_type not in json_types and not content_type.endswith("+json"):
            raise ApiError(415, "unsupported_media_type",
                           f"Content-Type {content_type!r} is not supported; send application/json or "
                           f"chemical/x-extxyz (or text/plain extxyz)")
        try:
            req = PredictRequest.model_validate_json(body)
        except ValidationError as exc:
            errors = exc.errors()
            if errors and errors[0]["type"] == "json_invalid":
                detail = errors[0]["msg"].removeprefix("Invalid JSON: ")
                raise ApiError(400, "invalid_json", f"malformed JSON: {detail}") from None
            raise ApiError(422, "invalid_request", _format_validation_error(exc)) from None
        properties = list(dict.fromkeys(req.properties)) or ["energy", "forces"]
        if (req.structures is None) == (req.extxyz is None):
            raise ApiError(422, "invalid_request", "give exactly one of 'structures' (a list) or 'extxyz' (text)")
        if req.extxyz is not None:
            raw = _read_extxyz(req.extxyz)
            _check_sizes([len(r[0]) for r in raw], limits)
            return validated(raw), properties
        assert req.structures is not None
        items = req.structures
        _check_sizes([max(len(s.positions), len(s.numbers or s.symbols or [])) for s in items], limits)
        for k, s in enumerate(items):
            bad = next((i for i, row in enumerate(s.positions) if len(row) != 3), None)
            if bad is not None:
                raise ApiError(422, "invalid_structure", f"structure {k}: positions[{bad}] has {len(s.positions[bad])} "
                                                         f"coordinates; positions must have shape (N, 3)")
        raw = [(_numbers_of(k, s), s.positions, s.cell, s.pbc) for k, s in enumerate(items)]
        return validated(raw), properties

    def validated(raw: Sequence[tuple[Any, Any, Any, Any]]) -> list[Structure]:
        structures = _validate(predictor, raw)
        try:
            _check_edges(structures, float(predictor.cutoff), limits, per_edge, mode)
        except StructureError as exc:  # the estimate's own checks (extent) name the structure
            raise ApiError(422, "invalid_structure", str(exc)) from None
        return structures

    request_body_doc = {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
            "chemical/x-extxyz": {"schema": {"type": "string"}},
            "text/plain": {"schema": {"type": "string", "description": "extxyz text"}},
        },
    }

    @app.post(
        "/v1/predict", response_model=PredictResponse, dependencies=[Depends(authorize)], tags=["model"],
        openapi_extra={"requestBody": request_body_doc},
        responses={400: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 415: {"model": ErrorResponse},
                   500: {"model": ErrorResponse}, 503: {"model": ErrorResponse}, 504: {"model": ErrorResponse},
                   507: {"model": ErrorResponse}},
    )
    async def predict(request: Request) -> Response:
        """Energy (eV), forces (eV/A), stress (eV/A^3, Voigt) and per-atom energies of structures.

        For extxyz bodies, ask for properties with ``?properties=energy,forces,stress``.
        """
        arriving.value += 1
        try:
            body = await read_body(request)
            structures, properties = parse_request(request, body)
            if "stress" in properties:
                for k, s in enumerate(structures):
                    if not s.pbc.all():
                        raise ApiError(422, "stress_unavailable",
                                       f"stress requested for structure {k}, which is not periodic in all three "
                                       f"directions (pbc={s.pbc.tolist()}); drop 'stress' or make it 3D-periodic")
            try:
                future = batcher.submit(structures, properties)
            except BatcherClosedError as exc:
                raise ApiError(503, "shutting_down", str(exc)) from None
            except QueueFullError as exc:
                raise ApiError(503, "overloaded", str(exc), {"Retry-After": "1"}) from None
        finally:
            arriving.value -= 1
        try:
            results = await Batcher.wait_async(future, timeout=limits.request_timeout_s)
        except RequestTimeoutError:
            raise ApiError(504, "timeout", f"no result within the server's request timeout of "
                                           f"{limits.request_timeout_s:g} s") from None
        except WorkerCrashedError as exc:
            raise ApiError(500, "worker_crashed", str(exc)) from None
        except WorkerTimeoutError as exc:
            raise ApiError(504, "timeout", str(exc)) from None
        except UnknownElementError as exc:
            raise ApiError(422, "unknown_element", str(exc)) from None
        except MemoryBudgetError as exc:  # does not fit the memory now: refused before the model call
            raise ApiError(507, "insufficient_memory", str(exc)) from None
        except BudgetError as exc:  # over max_edges
            raise ApiError(413, "too_large", str(exc)) from None
        except StructureError as exc:
            raise ApiError(422, "invalid_structure", str(exc)) from None
        except MemoryError as exc:  # a real allocation failure
            raise ApiError(507, "insufficient_memory", str(exc) or "out of memory") from None
        return _json_response({"results": [_result_json(r) for r in results], "model": model_ref})

    def custom_openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        request_schema = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(request_schema.pop("$defs", {}))
        components["PredictRequest"] = request_schema
        app.openapi_schema = schema
        return schema

    app.openapi = custom_openapi  # type: ignore[method-assign]
    return app


def _version() -> str:
    try:
        from .. import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover
        return "0"


# ---------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``equiformer-calc serve``."""
    from ..checkpoint import DEFAULT_CHECKPOINT

    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                        help=f"shipped name or path (default {DEFAULT_CHECKPOINT})")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    parser.add_argument("--token", default=os.environ.get("EQUIFORMER_CALC_TOKEN"),
                        help="require 'Authorization: Bearer TOKEN' (default: $EQUIFORMER_CALC_TOKEN; prefer the "
                             "environment variable, command lines are visible to other users)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="model precision")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--memory", default="auto", choices=["auto", "fast", "low"],
                        help="memory mode of model calls: 'low' evaluates large structures in a fraction of the "
                             "memory (~1.3x the time), 'auto' (default) uses it when 'fast' would not fit; calls "
                             "that fit in neither are answered 507")
    parser.add_argument("--max-batch-atoms", type=int, default=1024,
                        help="atom budget of one model call (default 1024)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0,
                        help="how long a request may wait for others to batch with, skipped when none are "
                             "arriving (default 5)")
    parser.add_argument("--no-batching", action="store_true", help="one model call per request")
    parser.add_argument("--max-atoms-per-structure", type=int, default=10_000, help="413 above (default 10000)")
    parser.add_argument("--max-atoms-per-request", type=int, default=50_000, help="413 above (default 50000)")
    parser.add_argument("--max-edges-per-structure", type=int, default=None,
                        help="413 above this estimated edge count (default: what fits in the memory budget)")
    parser.add_argument("--max-edges-per-request", type=int, default=None,
                        help="413 above this estimated edge count summed over a request (default: what fits in the "
                             "memory budget)")
    parser.add_argument("--memory-budget-gb", type=float, default=None,
                        help="memory one model call may use, in GiB (default: 80%% of the memory available when "
                             "the call starts)")
    parser.add_argument("--no-isolation", action="store_true",
                        help="run the model in the server process (default: in a worker process that is restarted "
                             "if it crashes)")
    parser.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body in MiB (default 16)")
    parser.add_argument("--request-timeout", type=float, default=120.0,
                        help="seconds (queueing included) before a request gets 504 (default 120)")
    parser.add_argument("--max-queued-requests", type=int, default=1024,
                        help="503 beyond this many waiting requests (default 1024)")
    parser.add_argument("--graceful-timeout", type=float, default=60.0,
                        help="on SIGTERM/SIGINT, seconds to let in-flight requests finish (default 60)")
    parser.add_argument("--keep-alive", type=float, default=30.0,
                        help="seconds an idle client connection stays open; clients reconnect transparently "
                             "(default 30)")
    parser.add_argument("--no-access-log", action="store_true", help="do not log every request")
    add_dispersion_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint and serve it with uvicorn until SIGINT/SIGTERM."""
    import uvicorn

    from ..checkpoint import CheckpointError

    from ..runtime import set_threads

    set_threads(args.threads)
    try:
        app = create_app(
            args.checkpoint,
            token=args.token or None,
            max_atoms_per_structure=args.max_atoms_per_structure,
            max_atoms_per_request=args.max_atoms_per_request,
            max_edges_per_structure=args.max_edges_per_structure,
            max_edges_per_request=args.max_edges_per_request,
            memory_budget="auto" if args.memory_budget_gb is None else int(args.memory_budget_gb * (1 << 30)),
            isolate=not args.no_isolation,
            max_body_bytes=int(args.max_body_mb * (1 << 20)),
            request_timeout_s=args.request_timeout,
            max_batch_atoms=args.max_batch_atoms,
            max_wait_ms=args.max_wait_ms,
            batching=not args.no_batching,
            max_queued_requests=args.max_queued_requests,
            device=args.device,
            dtype=args.dtype,
            dispersion=args.dispersion,
            xc=args.xc,
            memory=args.memory,
        )
    except (CheckpointError, ValueError, ImportError) as exc:
        log.error("%s", exc)
        return 2
    if not args.token and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without a token: anyone who can reach this address can use the model", args.host)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_config=None,  # use the CLI's logging setup
        log_level=logging.getLogger().getEffectiveLevel(),
        access_log=not args.no_access_log,
        timeout_keep_alive=max(1, int(round(args.keep_alive))),
        timeout_graceful_shutdown=args.graceful_timeout if args.graceful_timeout > 0 else None,
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the stop signal after its graceful shutdown; catch it here so that a
    # SIGTERM/SIGINT stop is a normal exit (status 0) rather than death by signal
    received: list[int] = []
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, _frame: received.append(signum))
    try:
        server.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    why = f" after {signal.Signals(received[0]).name}" if received else ""
    log.info("server stopped%s", why)
    return 0 if server.started else 1
