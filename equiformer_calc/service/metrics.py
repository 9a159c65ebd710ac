"""Prometheus metrics of the inference service, written by hand (text exposition format 0.0.4).

Only counters, gauges and histograms with a few fixed labels are needed, so this module avoids a
dependency on ``prometheus_client``. Everything is guarded by one lock: updates come from the
event loop and from the batcher's worker thread.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from typing import Callable, Iterable, Sequence

__all__ = ["Counter", "Gauge", "Histogram", "ServiceMetrics", "CONTENT_TYPE"]

#: the Content-Type of the text exposition format
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LabelKey = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(key: LabelKey, extra: Iterable[tuple[str, str]] = ()) -> str:
    items = list(key) + list(extra)
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _number(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(float(x))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, lock: threading.Lock) -> None:
        self.name = name
        self.help = help_text
        self._lock = lock

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A monotonically increasing count, optionally split by labels."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, lock: threading.Lock) -> None:
        super().__init__(name, help_text, lock)
        self._values: dict[LabelKey, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> list[str]:
        lines = self.header()
        values = self._values or {(): 0.0}
        lines += [f"{self.name}{_labels(k)} {_number(v)}" for k, v in sorted(values.items())]
        return lines


class Gauge(_Metric):
    """A value read at scrape time from a callback."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, lock: threading.Lock, read: Callable[[], float]) -> None:
        super().__init__(name, help_text, lock)
        self._read = read

    def render(self) -> list[str]:
        return self.header() + [f"{self.name} {_number(float(self._read()))}"]


class Histogram(_Metric):
    """Cumulative-bucket histogram (``_bucket{le=...}``, ``_sum``, ``_count``)."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, lock: threading.Lock, buckets: Sequence[float]) -> None:
        super().__init__(name, help_text, lock)
        self.buckets = sorted(float(b) for b in buckets)
        self._counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect_left(self.buckets, value)] += 1
            self._sum += value
            self._count += 1

    @property
    def count(self) -> int:
        return self._count

    @property
    def sum(self) -> float:
        return self._sum

    def render(self) -> list[str]:
        lines = self.header()
        cumulative = 0
        for bound, n in zip(self.buckets + [math.inf], self._counts):
            cumulative += n
            lines.append(f"{self.name}_bucket{_labels((), [('le', _number(bound))])} {cumulative}")
        lines.append(f"{self.name}_sum {_number(self._sum)}")
        lines.append(f"{self.name}_count {self._count}")
        return lines


class ServiceMetrics:
    """All metrics of one server process."""

    def __init__(self, queue_depth: Callable[[], float] = lambda: 0.0) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        lock = self._lock
        self.requests = Counter("equiformer_http_requests_total", "HTTP requests by path and status code.", lock)
        self.errors = Counter("equiformer_http_errors_total", "Error responses by error type.", lock)
        self.latency = Histogram(
            "equiformer_predict_latency_seconds", "Wall time of POST /v1/predict requests (all outcomes).", lock,
            [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
        )
        self.batch_requests = Histogram(
            "equiformer_batch_requests", "Requests merged into one model call.", lock,
            [1, 2, 4, 8, 16, 32, 64, 128],
        )
        self.batch_structures = Histogram(
            "equiformer_batch_structures", "Structures per model call.", lock, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
        )
        self.batch_atoms = Histogram(
            "equiformer_batch_atoms", "Atoms per model call.", lock,
            [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192],
        )
        self.batch_seconds = Histogram(
            "equiformer_batch_seconds", "Wall time of one model call.", lock,
            [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
        )
        self.structures = Counter("equiformer_structures_total", "Structures evaluated.", lock)
        self.atoms = Counter("equiformer_atoms_total", "Atoms evaluated.", lock)
        self.merged_requests = Counter(
            "equiformer_merged_requests_total", "Requests answered by a model call shared with other requests.", lock
        )
        self.fallbacks = Counter(
            "equiformer_batch_fallbacks_total", "Merged model calls that failed and were re-run request by request.",
            lock,
        )
        self.gauges = [
            Gauge("equiformer_queue_depth", "Prediction requests queued or running.", lock, queue_depth),
            Gauge("equiformer_uptime_seconds", "Seconds since the server started.", lock,
                  lambda: time.time() - self.started),
        ]

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

    def render(self) -> str:
        """The whole exposition text."""
        metrics: list = [
            self.requests, self.errors, self.latency, self.batch_requests, self.batch_structures, self.batch_atoms,
            self.batch_seconds, self.structures, self.atoms, self.merged_requests, self.fallbacks, *self.gauges,
        ]
        with self._lock:
            static = [m for m in metrics if not isinstance(m, Gauge)]
            lines = [line for m in static for line in m.render()]
        lines += [line for g in self.gauges for line in g.render()]
        return "\n".join(lines) + "\n"
