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
the model in a single worker thread. The schemas and request reading are :mod:`.schema`;
:func:`equiformer_calc.service.serve.serve` runs the app with uvicorn (``equiformer-calc serve``).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..graph import BudgetError, Structure, StructureError
from ..model import UnknownElementError
from ..predictor import ALL_PROPERTIES, MEMORY_HEADROOM, MemoryBudgetError, Predictor
from .batcher import Batcher, BatcherClosedError, QueueFullError, RequestTimeoutError
from .metrics import ServiceMetrics
from .schema import (
    STATUS_TYPES,
    ApiError,
    ErrorResponse,
    HealthResponse,
    Limits,
    ModelsResponse,
    PredictRequest,
    PredictResponse,
    check_edges,
    check_sizes,
    format_validation_error,
    parse_properties,
    read_extxyz,
    result_json,
    structure_numbers,
    validate_structures,
)
from .worker import IsolatedPredictor, WorkerCrashedError, WorkerTimeoutError

__all__ = ["create_app", "EXTXYZ_TYPES"]

log = logging.getLogger(__name__)


#: Content-Types read as extxyz text
EXTXYZ_TYPES = {"chemical/x-extxyz", "chemical/x-xyz", "text/x-extxyz", "text/plain"}
#: an over-limit body is still read (and discarded) up to this many extra bytes, so the client
#: gets the 413 instead of a connection reset
_DRAIN_BYTES = 16 << 20
_PATHS = ("/health", "/v1/predict", "/v1/models", "/metrics", "/docs", "/openapi.json")


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
        from ..integrations.d3 import D3, DispersionPredictor

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
        return error_response(exc.status_code, STATUS_TYPES.get(exc.status_code, "http_error"), message,
                              getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
        return error_response(422, "invalid_request", format_validation_error(exc))

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
            properties = parse_properties(request.query_params.getlist("properties"))
            raw = read_extxyz(text)
            check_sizes([len(r[0]) for r in raw], limits)
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
            raise ApiError(422, "invalid_request", format_validation_error(exc)) from None
        properties = list(dict.fromkeys(req.properties)) or ["energy", "forces"]
        if (req.structures is None) == (req.extxyz is None):
            raise ApiError(422, "invalid_request", "give exactly one of 'structures' (a list) or 'extxyz' (text)")
        if req.extxyz is not None:
            raw = read_extxyz(req.extxyz)
            check_sizes([len(r[0]) for r in raw], limits)
            return validated(raw), properties
        assert req.structures is not None
        items = req.structures
        check_sizes([max(len(s.positions), len(s.numbers or s.symbols or [])) for s in items], limits)
        for k, s in enumerate(items):
            bad = next((i for i, row in enumerate(s.positions) if len(row) != 3), None)
            if bad is not None:
                raise ApiError(422, "invalid_structure", f"structure {k}: positions[{bad}] has {len(s.positions[bad])} "
                                                         f"coordinates; positions must have shape (N, 3)")
        raw = [(structure_numbers(k, s), s.positions, s.cell, s.pbc) for k, s in enumerate(items)]
        return validated(raw), properties

    def validated(raw: Sequence[tuple[Any, Any, Any, Any]]) -> list[Structure]:
        structures = validate_structures(predictor, raw)
        try:
            check_edges(structures, float(predictor.cutoff), limits, per_edge, mode)
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
        return _json_response({"results": [result_json(r) for r in results], "model": model_ref})

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
