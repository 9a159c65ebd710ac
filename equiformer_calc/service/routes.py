"""The service's endpoints: module-level handlers and the one list that registers them.

A handler reads the server's :class:`~.state.ServiceState` from ``request.app.state.service``.
Adding an endpoint is one handler here and one line in :data:`ROUTES`. Errors are raised, not
answered: :class:`~.schema.ApiError` carries its status, and any other exception is answered from
the package's error table (:mod:`equiformer_calc.errors`) by :func:`install_error_handlers`.

Nothing here does work proportional to a request's size on the event loop: bodies are read in
chunks, parsed in a parser process (:mod:`.parsing`), finished and serialised in a daemon thread
(:func:`off_loop`), so ``/health`` answers while any request is in flight.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import json
import logging
import threading
import time
from typing import Any, Callable

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import classify
from .batcher import Batcher, RequestTimeoutError
from .parsing import check_edges, finish_structures
from .schema import STATUS_TYPES, ApiError, ErrorResponse, HealthResponse, ModelsResponse, PredictResponse, \
    format_validation_error, result_json
from .state import ServiceState

__all__ = ["ROUTES", "register", "install_error_handlers", "off_loop"]

log = logging.getLogger(__name__)

#: an over-limit body is still read (and discarded) up to this many extra bytes, so the client
#: gets the 413 instead of a connection reset
_DRAIN_BYTES = 16 << 20


def _state(request: Request) -> ServiceState:
    return request.app.state.service  # type: ignore[no-any-return]


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(payload).encode(), status_code=status, media_type="application/json", headers=headers)


async def off_loop(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a daemon thread (so that a stop never waits for it), awaited."""
    future: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
            future.set_exception(exc)

    threading.Thread(target=run, name="equiformer-request", daemon=True).start()
    return await asyncio.wrap_future(future)


# ---------------------------------------------------------------------------------- auth
_BEARER = HTTPBearer(auto_error=False, description="the server's token (--token / EQUIFORMER_CALC_TOKEN)")


async def _drain_body(request: Request, limit: int) -> None:
    """Read and drop a request body of acceptable size (not one declared far over the limit)."""
    declared = request.headers.get("content-length", "")
    cap = limit + _DRAIN_BYTES
    if request.method != "POST" or (declared.isdigit() and int(declared) > cap):
        return
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            return


async def authorize(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_BEARER)) -> None:
    """401 unless the server has no token or the request carries it."""
    state = _state(request)
    if state.token is None:
        return
    if credentials is None:
        message = "missing bearer token: send 'Authorization: Bearer <token>'"
    elif not hmac.compare_digest(credentials.credentials.encode(), state.token.encode()):
        message = "invalid bearer token"
    else:
        return
    await _drain_body(request, state.limits.max_body_bytes)  # so that a client still sending its body reads the 401
    raise ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


# ---------------------------------------------------------------------------------- handlers
async def health(request: Request) -> dict[str, Any]:
    """Liveness: answers as long as the server accepts requests (no token needed)."""
    state = _state(request)
    return {"status": "ok", "model": state.info["id"], "uptime_s": time.time() - state.metrics.started,
            "queue_depth": state.batcher.queue_depth}


async def models(request: Request) -> dict[str, Any]:
    """The served checkpoint: metadata, elements, cutoff, dtype, request limits, batching."""
    return {"models": [_state(request).info]}


async def prometheus(request: Request) -> Response:
    """Request / error counters, batch-size and latency histograms, process metrics (Prometheus
    text format, or OpenMetrics when the scraper asks for it)."""
    body, content_type = _state(request).metrics.render(request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type})


async def _read_body(request: Request, limit: int) -> bytes:
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


def _prepare(state: ServiceState, content_type: str, body: bytes, query: list[str]) -> tuple[list[Any], list[str]]:
    """Parse (parser process), check elements and edges, and check stress requests (this thread)."""
    deadline = time.monotonic() + state.parsers.timeout_s  # the parse budget covers this whole function
    packed, properties, failed = state.parsers.parse(content_type, body, query, state.limits)
    structures = finish_structures(packed, failed, state.predictor, state.check_elements, deadline, state.limits,
                                   state.known_numbers)
    check_edges(structures, float(state.predictor.cutoff), state.limits, state.bytes_per_edge, state.mode, deadline)
    if "stress" in properties:
        for k, s in enumerate(structures):
            if not s.pbc.all():
                raise ApiError(422, "stress_unavailable",
                               f"stress requested for structure {k}, which is not periodic in all three "
                               f"directions (pbc={s.pbc.tolist()}); drop 'stress' or make it 3D-periodic")
    return structures, properties


def _response_body(results: list[dict[str, Any]], model_ref: dict[str, Any]) -> bytes:
    """``json.dumps({"results": [...], "model": ...})``, byte for byte, one result at a time."""
    items = ", ".join(json.dumps(result_json(r)) for r in results)
    return f'{{"results": [{items}], "model": {json.dumps(model_ref)}}}'.encode()


async def predict(request: Request) -> Response:
    """Energy (eV), forces (eV/A), stress (eV/A^3, Voigt) and per-atom energies of structures.

    For extxyz bodies, ask for properties with ``?properties=energy,forces,stress``.
    """
    state = _state(request)
    state.arriving.value += 1
    try:
        body = await _read_body(request, state.limits.max_body_bytes)
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        query = request.query_params.getlist("properties")
        structures, properties = await off_loop(_prepare, state, content_type, body, query)
        try:
            future = state.batcher.submit(structures, properties)
        except Exception as exc:  # closed or full: answered from the error table
            raise _api_error(exc) from None
    finally:
        state.arriving.value -= 1
    try:
        results = await Batcher.wait_async(future, timeout=state.limits.request_timeout_s)
    except RequestTimeoutError:
        raise ApiError(504, "timeout", f"no result within the server's request timeout of "
                                       f"{state.limits.request_timeout_s:g} s") from None
    except Exception as exc:  # noqa: BLE001 - answered from the error table
        raise _api_error(exc) from None
    body = await off_loop(_response_body, results, state.model_ref)
    return Response(body, media_type="application/json")


#: (path, handler, method, FastAPI route options): one line per endpoint
_PREDICT_BODY = {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
    "chemical/x-extxyz": {"schema": {"type": "string"}},
    "text/plain": {"schema": {"type": "string", "description": "extxyz text"}}}}
_PREDICT_ERRORS = {code: {"model": ErrorResponse} for code in (400, 413, 415, 500, 503, 504, 507)}
_AUTH = [Depends(authorize)]
ROUTES: list[tuple[str, Callable[..., Any], str, dict[str, Any]]] = [
    ("/health", health, "GET", {"response_model": HealthResponse, "tags": ["service"]}),
    ("/v1/models", models, "GET", {"response_model": ModelsResponse, "dependencies": _AUTH, "tags": ["model"]}),
    ("/metrics", prometheus, "GET", {"dependencies": _AUTH, "tags": ["service"], "responses": {
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}}}),
    ("/v1/predict", predict, "POST", {"response_model": PredictResponse, "dependencies": _AUTH, "tags": ["model"],
                                      "openapi_extra": {"requestBody": _PREDICT_BODY}, "responses": _PREDICT_ERRORS}),
]


def register(app: FastAPI, routes: list[tuple[str, Callable[..., Any], str, dict[str, Any]]] | None = None) -> None:
    """Add every route of ``routes`` (default :data:`ROUTES`) to ``app``. Endpoints that live in a
    module of their own (they use this module's helpers, so this module cannot import them; e.g.
    :data:`.vibrations.ROUTES`) are registered by :func:`~.app.create_app` with a second call."""
    for path, handler, method, options in ROUTES if routes is None else routes:
        app.add_api_route(path, handler, methods=[method], **options)


# ---------------------------------------------------------------------------------- errors
def _api_error(exc: BaseException) -> ApiError:
    """An exception as the API error of the package's error table."""
    kind = classify(exc)
    message = str(exc) or ("out of memory" if kind.type == "insufficient_memory" else type(exc).__name__)
    if kind.status == 500 and kind.type == "internal":
        log.error("unhandled error", exc_info=exc)
        message = f"internal server error: {type(exc).__name__}: {exc}"
    return ApiError(kind.status, kind.type, message, dict(kind.headers) or None)


def error_response(request: Request, exc: ApiError) -> Response:
    _state(request).metrics.errors.labels(type=exc.type).inc()
    (log.warning if exc.status >= 500 else log.info)("%d %s: %s", exc.status, exc.type, exc.message)
    return json_response({"error": {"type": exc.type, "message": exc.message}}, status=exc.status, headers=exc.headers)


async def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(request, exc)


async def _on_internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", exc_info=exc)
    return error_response(request, ApiError(500, "internal", f"internal server error: {type(exc).__name__}: {exc}"))


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"no endpoint {request.url.path}; see /docs"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    error = ApiError(exc.status_code, STATUS_TYPES.get(exc.status_code, "http_error"), message,
                     getattr(exc, "headers", None))
    return error_response(request, error)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(request, ApiError(422, "invalid_request", format_validation_error(exc)))


def install_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"error": {"type", "message"}}`` with its status."""
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, _on_internal_error)
