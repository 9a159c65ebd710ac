"""HTTP inference service: a FastAPI app over one model (``equiformer-calc serve``).

Endpoints (all JSON except ``/metrics``; errors are ``{"error": {"type": ..., "message": ...}}``):

* ``POST /v1/predict`` -- structures as JSON (``{"structures": [...], "properties": [...]}``), as a
  JSON field ``"extxyz"``, or as an extxyz body (``Content-Type: chemical/x-extxyz`` or
  ``text/plain``; properties then come from the ``properties`` query parameter). Answers energy
  (eV), forces (eV/A), stress (6 Voigt components, eV/A^3, ASE sign convention) and per-atom
  energies, one result per structure, in input order.
* ``POST /v1/vibrations`` -- harmonic vibrations of one structure (body as for ``/v1/predict``;
  ``indices`` or ``mask``, ``delta``, ``nfree`` as query parameters; see :mod:`.vibrations`):
  frequencies in cm^-1 (imaginary ones negative), zero-point energy, Hessian, batched-call count.
* ``GET /health`` -- liveness (never needs the token).
* ``GET /v1/models`` -- the served checkpoint: metadata, elements, cutoff, dtype, limits.
* ``GET /metrics`` -- Prometheus text format.
* ``GET /docs``, ``/redoc`` -- the API's documentation, with Swagger UI and ReDoc served from the
  installed ``fastapi-offline`` package (no CDN: works offline).

The pieces: :mod:`.state` (``build_state``: the stacked predictor wrappers, batcher, limits),
:mod:`.routes` (the handlers and their registration), :mod:`.parsing` (bounded request reading
off the event loop), :mod:`.schema` (the wire format), :func:`equiformer_calc.service.serve.serve`
(uvicorn, signals and the shutdown grace period).
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..predictor import Predictor
from .metrics import ServiceMetrics
from .parsing import EXTXYZ_TYPES
from .routes import install_error_handlers, register
from .schema import ErrorResponse, PredictRequest
from .state import ModelSource, ServiceOptions, ServiceState, build_state, startup_log
from .vibrations import ROUTES as VIBRATION_ROUTES

__all__ = ["create_app", "EXTXYZ_TYPES", "ServiceOptions"]

log = logging.getLogger(__name__)

_PATHS = ("/health", "/v1/predict", "/v1/vibrations", "/v1/models", "/metrics", "/docs", "/redoc", "/openapi.json")
#: after the in-flight requests (uvicorn's graceful timeout), queued work still gets this long
_STOP_TIMEOUT_S = 10.0


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


#: the documentation pages may load nothing from elsewhere: ReDoc's bundle links a logo on a CDN
#: (cdn.redoc.ly) unconditionally; under this policy the browser never sends that request
_DOCS_CSP = (b"default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' blob:; "
             b"style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
             b"worker-src 'self' blob:; connect-src 'self'")


class _DocsPolicyMiddleware:
    """Adds :data:`_DOCS_CSP` to the /docs and /redoc pages (pure ASGI)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in ("/docs", "/redoc"):
            await self.app(scope, receive, send)
            return

        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"content-security-policy", _DOCS_CSP)]}
            await send(message)

        await self.app(scope, receive, send_with_policy)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServiceState = app.state.service
    state.start()
    startup_log(state)
    try:
        yield
    finally:
        log.info("shutting down: finishing %d queued request(s)", state.batcher.queue_depth)
        state.stop(timeout_s=min(max(state.limits.request_timeout_s, 1.0), _STOP_TIMEOUT_S))


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the request schema that /v1/predict reads by hand."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    request_schema = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(request_schema.pop("$defs", {}))
    components["PredictRequest"] = request_schema
    app.openapi_schema = schema
    return schema


def create_app(model: ModelSource, **options: Any) -> FastAPI:
    """The FastAPI app serving one model: a
    :class:`~equiformer_calc.calculators.settings.ModelSettings` or a checkpoint name/path (loaded,
    and run in a worker process unless ``isolate=False``; the settings carry device, dtype,
    ``memory``/``memory_budget`` (507 for a call that does not fit the memory now) and D3
    ``dispersion``/``xc``, added in the model's process), or a :class:`Predictor` (or a D3
    ``DispersionPredictor`` over one; used as is, in this process unless ``isolate=True``).
    ``options`` are the fields of :class:`~.state.ServiceOptions`: ``token`` (bearer auth on all but
    ``/health`` and the docs), atom/edge/body limits (413 above), ``request_timeout_s`` (504),
    ``parse_timeout_s`` (reading one body; 413 above), batching."""
    state = build_state(model, ServiceOptions(**options))
    app = FastAPIOffline(
        title="equiformer-calc inference service", version=_version(), lifespan=_lifespan,
        description="Energies, forces and stress of an Equiformer interatomic potential (eV, Angstrom).",
        responses={401: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
    )
    app.state.service = state
    app.state.predictor, app.state.batcher, app.state.metrics = state.predictor, state.batcher, state.metrics
    app.state.limits = state.limits
    app.add_middleware(_MetricsMiddleware, metrics=state.metrics)  # type: ignore[arg-type]
    app.add_middleware(_DocsPolicyMiddleware)  # type: ignore[arg-type]
    install_error_handlers(app)
    register(app)
    register(app, VIBRATION_ROUTES)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _version() -> str:
    try:
        from .. import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover
        return "0"
