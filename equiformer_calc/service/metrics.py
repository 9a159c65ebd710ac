"""Prometheus metrics of the inference service, kept by ``prometheus_client``.

Every :class:`ServiceMetrics` owns its own :class:`~prometheus_client.CollectorRegistry` (never
the library's global default), so several apps in one process (tests, an embedding application)
each count their own requests and never collide on metric names. The registry also carries the
standard process metrics (``process_resident_memory_bytes``, ``process_cpu_seconds_total``,
``process_open_fds``, ...), the Python platform and the garbage collector.

The metric names and labels are those of the service's first, hand-written exposition, so
existing dashboards keep working. ``prometheus_client``'s metric objects are thread-safe: they
are updated from the event loop and from the batcher's worker thread.
"""

from __future__ import annotations

import time
from typing import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder

__all__ = ["ServiceMetrics"]


class ServiceMetrics:
    """All metrics of one server (app): request counters, batch histograms, gauges, process.

    ``queue_depth`` is read at scrape time (requests queued or running).
    """

    def __init__(self, queue_depth: Callable[[], float] = lambda: 0.0) -> None:
        self.registry = CollectorRegistry()
        self.started = time.time()
        reg = self.registry
        self.requests = Counter("equiformer_http_requests_total", "HTTP requests by path and status code.",
                                ["path", "status"], registry=reg)
        self.errors = Counter("equiformer_http_errors_total", "Error responses by error type.", ["type"], registry=reg)
        self.latency = Histogram(
            "equiformer_predict_latency_seconds", "Wall time of POST /v1/predict requests (all outcomes).",
            buckets=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0], registry=reg,
        )
        self.batch_requests = Histogram(
            "equiformer_batch_requests", "Requests merged into one model call.",
            buckets=[1, 2, 4, 8, 16, 32, 64, 128], registry=reg,
        )
        self.batch_structures = Histogram(
            "equiformer_batch_structures", "Structures per model call.",
            buckets=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512], registry=reg,
        )
        self.batch_atoms = Histogram(
            "equiformer_batch_atoms", "Atoms per model call.",
            buckets=[16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192], registry=reg,
        )
        self.batch_seconds = Histogram(
            "equiformer_batch_seconds", "Wall time of one model call.",
            buckets=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0], registry=reg,
        )
        self.structures = Counter("equiformer_structures_total", "Structures evaluated.", registry=reg)
        self.atoms = Counter("equiformer_atoms_total", "Atoms evaluated.", registry=reg)
        self.merged_requests = Counter(
            "equiformer_merged_requests_total", "Requests answered by a model call shared with other requests.",
            registry=reg,
        )
        self.fallbacks = Counter(
            "equiformer_batch_fallbacks_total", "Merged model calls that failed and were re-run request by request.",
            registry=reg,
        )
        Gauge("equiformer_queue_depth", "Prediction requests queued or running.",
              registry=reg).set_function(lambda: float(queue_depth()))
        Gauge("equiformer_uptime_seconds", "Seconds since the server started.",
              registry=reg).set_function(lambda: time.time() - self.started)
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)

    def observe_batch(self, requests: int, structures: int, atoms: int, seconds: float, fallback: bool) -> None:
        """Record one model call (called from the batcher's worker thread)."""
        if fallback:
            self.fallbacks.inc()
            return  # the per-request re-runs are recorded on their own
        self.batch_requests.observe(requests)
        self.batch_structures.observe(structures)
        self.batch_atoms.observe(atoms)
        self.batch_seconds.observe(seconds)
        self.structures.inc(structures)
        self.atoms.inc(atoms)
        if requests > 1:
            self.merged_requests.inc(requests)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition and its Content-Type, in the format the scraper's ``Accept`` header asks
        for (OpenMetrics when asked, else Prometheus text 0.0.4)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
