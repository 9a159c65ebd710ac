"""ASE calculator that evaluates structures on an ``equiformer-calc serve`` server over HTTP.

The transport is ``httpcore`` (the HTTP core of ``httpx``, by the same maintainers): one pooled,
thread-safe ``httpcore.ConnectionPool`` per calculator (keep-alive connections shared by every
thread that uses the calculator), separate connect and read timeouts, and retries with
exponential backoff where re-sending is safe (see :class:`RemoteEquiformerCalculator`). The
calculator talks to one server with one kind of request, so it uses the pool directly rather than
through ``httpx.Client``, whose per-request work (URL merging, cookies, auth and redirect
handling, header models) it does not need: that work cost about 0.4 ms of CPU per request, more
than the pool's own HTTP work (benchmarks/RESULTS.md, "Service throughput").

>>> calc = RemoteEquiformerCalculator("http://127.0.0.1:8000", token=os.environ.get("EQUIFORMER_CALC_TOKEN"))
>>> atoms.calc = calc; atoms.get_forces()
>>> calc.predict([atoms1, atoms2])          # many structures in one request
"""

from __future__ import annotations

import http
import json
import logging
import os
import random
import threading
import time
import urllib.parse
from typing import Any, Sequence

import httpcore
import numpy as np
import orjson
from ase import Atoms

from ..calculators.base import EquiformerCalculatorBase, reject_unknown_keywords

__all__ = [
    "RemoteEquiformerCalculator",
    "RemoteCalculatorError",
    "ServerUnavailableError",
    "RemoteTimeoutError",
    "ServerRejectedError",
    "AuthenticationError",
    "RequestTooLargeError",
    "atoms_to_json",
]

log = logging.getLogger(__name__)


class RemoteCalculatorError(RuntimeError):
    """Base class of every error of :class:`RemoteEquiformerCalculator`.

    ``status`` is the HTTP status (None when no answer came), ``error_type`` the server's error
    kind (e.g. ``unknown_element``), ``message`` the server's (or the transport's) message.
    """

    def __init__(
        self, message: str, *, url: str = "", status: int | None = None, error_type: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.url = url
        self.status = status
        self.error_type = error_type


class ServerUnavailableError(RemoteCalculatorError):
    """No connection to the server (not running, wrong address, connection dropped)."""


class RemoteTimeoutError(RemoteCalculatorError):
    """No answer within the client's timeout, or the server's own request timeout (HTTP 504)."""


class ServerRejectedError(RemoteCalculatorError):
    """The server answered with an error status (4xx / 5xx); the message is the server's."""


class AuthenticationError(ServerRejectedError):
    """HTTP 401: missing or wrong token."""


class RequestTooLargeError(ServerRejectedError):
    """HTTP 413: a structure, the request or its body is over the server's limits."""


def atoms_to_json(atoms: Atoms) -> dict[str, Any]:
    """One structure in the service's JSON form."""
    pbc = [bool(p) for p in atoms.pbc]
    out: dict[str, Any] = {
        "numbers": [int(z) for z in atoms.get_atomic_numbers()],
        "positions": np.asarray(atoms.get_positions(), dtype=np.float64).tolist(),
        "pbc": pbc,
    }
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    if any(pbc) or np.any(cell):
        out["cell"] = cell.tolist()
    return out


def _result_from_json(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in result.items():
        if key in ("energy", "free_energy", "energy_uncertainty"):
            out[key] = float(value)
        elif key == "forces":
            out[key] = np.asarray(value, dtype=np.float64).reshape(-1, 3)
        else:
            out[key] = np.asarray(value, dtype=np.float64)
    if "energy" in out:
        out.setdefault("free_energy", out["energy"])
    return out



def _encode(payload: dict[str, Any]) -> bytes:
    """A request body. ``orjson`` writes it in one call (the stdlib's ``json.dumps`` took about a
    tenth of the client's CPU per request); every float survives exactly (shortest round-trip
    decimals, as with the stdlib). orjson writes NaN and inf as ``null``, which the server would
    report as "not a number": a body with a ``null`` (no structure field is ever null) is written
    by the stdlib instead, whose ``NaN`` / ``Infinity`` the server reads and answers with a 422
    naming the atoms."""
    body = orjson.dumps(payload)
    if b"null" in body:
        body = json.dumps(payload).encode()
    return body


def _decode_json(data: bytes) -> Any:
    """The decoded JSON answer, None if there is none. orjson refuses the ``NaN`` / ``Infinity``
    that the server's stdlib ``json.dumps`` writes for non-finite numbers (a diverged model): those
    answers are read by the stdlib."""
    if not data:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


#: transport failures after which a request is sent again: it never reached the server (refused,
#: unreachable, connect timeout) or the server dropped the connection without answering (it died
#: or restarted, or closed an idle keep-alive connection as the request went out). Predictions are
#: pure functions of the request, so sending one again is safe.
_RETRYABLE = (httpcore.ConnectError, httpcore.ConnectTimeout, httpcore.ReadError, httpcore.WriteError,
              httpcore.RemoteProtocolError)
_NOT_CONNECTED = (httpcore.ConnectError, httpcore.ConnectTimeout)
#: every other failure httpcore raises (its exceptions have no common base class)
_OTHER_FAILURES = (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol, httpcore.ProxyError)


class RemoteEquiformerCalculator(EquiformerCalculatorBase):
    """The :class:`~equiformer_calc.calculators.local.EquiformerCalculator` interface, evaluated by a server.

    ``url`` is the server's base address (``http://host:port``); ``token`` its bearer token
    (default ``$EQUIFORMER_CALC_TOKEN``). ``timeout`` is the seconds to wait for an answer once a
    request is sent (and to send it), ``connect_timeout`` the seconds to wait for a connection.
    Stress is available for systems periodic in 3D only. ``predict(list_of_atoms)`` evaluates
    many structures in as few requests as the server's atom limit allows.

    One pooled ``httpcore.ConnectionPool`` per calculator carries every request: keep-alive
    connections are reused across calls and shared by threads, so one calculator may serve many
    threads at once.

    Retries: a request that did not reach the server (connection refused, unreachable, connect
    timeout), a connection the server dropped without answering, and a 503 answer (overloaded or
    shutting down) are sent again up to ``retries`` times after waiting about ``backoff``,
    ``2 * backoff``, ``4 * backoff``... seconds (each at most ``max_backoff``; a 503's
    ``Retry-After`` is honoured up to that cap). With the defaults a server that is back within
    about 20 s (a restart) goes unnoticed by a relaxation or an MD run. Never sent again: a 4xx
    answer (the request itself is wrong), any other 5xx, a 504 (the server's own request timeout:
    it has queued or run the request; sending it again would queue the same work) and a read
    timeout (the server may still be working on it).

    Errors are :class:`RemoteCalculatorError` subclasses carrying the server's message:
    :class:`ServerUnavailableError` (no connection, after the retries),
    :class:`RemoteTimeoutError` (read timeout or 504), :class:`AuthenticationError` (401),
    :class:`RequestTooLargeError` (413), :class:`ServerRejectedError` (any other error status).

    Settings are ASE parameters (``todict()``, ``ase db``): ``url`` and the transport settings;
    never the token.
    """

    #: the keywords this calculator accepts besides ASE's base ones (anything else is a TypeError)
    keywords = ("url", "token", "timeout", "connect_timeout", "retries", "backoff", "max_backoff")
    default_parameters: dict[str, Any] = {"url": "http://127.0.0.1:8000", "timeout": 300.0, "connect_timeout": 10.0,
                                          "retries": 6, "backoff": 0.5, "max_backoff": 10.0}

    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, timeout: float = 300.0,
                 *, connect_timeout: float = 10.0, retries: int = 6, backoff: float = 0.5, max_backoff: float = 10.0,
                 **kwargs: Any) -> None:
        reject_unknown_keywords(type(self).__name__, kwargs, self.keywords)
        super().__init__(**kwargs)
        parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"url must look like http://host:port, got {url!r}")
        for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout)):
            if not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if int(retries) != retries or retries < 0:
            raise ValueError(f"retries must be a whole number >= 0, got {retries!r}")
        if not 0 <= backoff <= max_backoff:
            raise ValueError(f"need 0 <= backoff <= max_backoff, got backoff={backoff!r}, max_backoff={max_backoff!r}")
        self.url = urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path.rstrip("/"), "", ""))
        self.token = token if token is not None else os.environ.get("EQUIFORMER_CALC_TOKEN")
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.parameters.update(url=self.url, timeout=self.timeout, connect_timeout=self.connect_timeout,
                               retries=self.retries, backoff=self.backoff, max_backoff=self.max_backoff)
        self._pool: httpcore.ConnectionPool | None = None
        self._pool_lock = threading.Lock()
        self._info: dict[str, Any] | None = None
        self._prepare_requests()

    # ------------------------------------------------------------------ ASE interface (calculate: the base's)
    def predict(
        self, structures: Sequence[Atoms], properties: Sequence[str] = ("energy", "forces")
    ) -> list[dict[str, Any]]:
        """Energies (and forces, stress...) of many structures; one dict of numpy arrays per
        structure, in order. Requests are split to respect the server's atoms-per-request limit.
        The attached structure alone (``calculate()``) goes in one request without asking the
        server for its limits first."""
        structures = list(structures)
        if not structures:
            return []
        if len(structures) == 1 and structures[0] is self.atoms:
            return self._post_predict([atoms_to_json(structures[0])], properties)
        limit = self._max_atoms_per_request()
        results: list[dict[str, Any]] = []
        chunk: list[dict[str, Any]] = []
        atoms_in_chunk = 0
        for atoms in structures:
            n = len(atoms)
            if chunk and limit and atoms_in_chunk + n > limit:
                results += self._post_predict(chunk, properties)
                chunk, atoms_in_chunk = [], 0
            chunk.append(atoms_to_json(atoms))
            atoms_in_chunk += n
        results += self._post_predict(chunk, properties)
        return results

    def info(self) -> dict[str, Any]:
        """The served model (``GET /v1/models``): elements, cutoff, dtype, limits, metadata."""
        if self._info is None:
            self._info = self._request("GET", "/v1/models")["models"][0]
        return self._info

    def health(self) -> dict[str, Any]:
        """``GET /health``, not retried (raises :class:`ServerUnavailableError` at once when the
        server is down)."""
        return self._request("GET", "/health", retries=0)

    def close(self) -> None:
        """Close the pooled connections (a later request opens new ones)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def __enter__(self) -> "RemoteEquiformerCalculator":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ transport
    def _http(self) -> httpcore.ConnectionPool:
        """The calculator's connection pool, created on first use (thread-safe)."""
        pool = self._pool
        if pool is None:
            with self._pool_lock:
                if self._pool is None:
                    # no cap on connections: every thread gets one; idle ones are kept for reuse
                    # (closed after 5 s idle, as httpx does, before a server's keep-alive drops them)
                    self._pool = httpcore.ConnectionPool(max_connections=None, max_keepalive_connections=64,
                                                         keepalive_expiry=5.0)
                pool = self._pool
        return pool

    def _prepare_requests(self) -> None:
        """What every request of this calculator shares, built once: the parsed URLs, the headers
        and the timeouts (httpcore validates each given object; building them per request was a
        measurable part of the client's CPU)."""
        parsed = urllib.parse.urlsplit(self.url)
        host = (parsed.hostname or "").encode("idna")
        self._origin = (parsed.scheme.encode(), host, parsed.port)
        self._prefix = parsed.path.encode()
        self._urls: dict[str, httpcore.URL] = {}
        host_header = b"[%b]" % host if b":" in host else host
        if parsed.port is not None:
            host_header += b":%d" % parsed.port
        headers = [(b"Host", host_header)]
        if self.token:
            headers.append((b"Authorization", f"Bearer {self.token}".encode()))
        self._headers = headers
        self._timeouts = {"connect": self.connect_timeout, "read": self.timeout, "write": self.timeout,
                          "pool": self.timeout}

    def _send(self, method: bytes, path: str, body: bytes | None) -> tuple[int, bytes, str | None]:
        """One HTTP exchange on the pool: status, body and the ``Retry-After`` header (if any)."""
        headers = self._headers
        if body is not None:
            headers = headers + [(b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(body))]
        url = self._urls.get(path)
        if url is None:
            scheme, host, port = self._origin
            url = httpcore.URL(scheme=scheme, host=host, port=port, target=self._prefix + path.encode())
            self._urls[path] = url
        request = httpcore.Request(method, url, headers=headers, content=body,
                                   extensions={"timeout": self._timeouts})
        response = self._http().handle_request(request)
        try:
            data = response.read()
        finally:
            response.close()
        retry_after = None
        if response.status == 503:
            retry_after = next((v.decode("latin-1") for k, v in response.headers if k.lower() == b"retry-after"), None)
        return response.status, data, retry_after

    def _max_atoms_per_request(self) -> int | None:
        try:
            return int(self.info()["limits"]["max_atoms_per_request"])
        except (RemoteCalculatorError, KeyError, TypeError, ValueError, IndexError):
            return None  # the server will say 413 if needed

    def _post_predict(self, structures: list[dict[str, Any]], properties: Sequence[str]) -> list[dict[str, Any]]:
        body = _encode({"structures": structures, "properties": list(properties)})
        try:  # known only once info() was fetched (predict() does; calculate() does not pay for it)
            limit = int(self._info["limits"]["max_body_bytes"]) if self._info else None
        except (KeyError, TypeError, ValueError):
            limit = None
        if limit is not None and len(body) > limit:
            raise RequestTooLargeError(
                f"the request body would be {len(body)} bytes; the server at {self.url} accepts at most {limit}",
                url=self.url + "/v1/predict", status=None, error_type="too_large")
        answer = self._request("POST", "/v1/predict", body=body)
        return [_result_from_json(r) for r in answer["results"]]

    def _request(self, method: str, path: str, body: bytes | None = None, retries: int | None = None) -> Any:
        """Send one request (again where that is safe, see the class docstring); the decoded JSON
        answer, or a :class:`RemoteCalculatorError`."""
        target = f"{self.url}{path}"
        verb = method.encode()
        retries = self.retries if retries is None else retries
        start = time.monotonic()
        attempt = 0
        while True:
            try:
                status, data, retry_after = self._send(verb, path, body)
            except _RETRYABLE as exc:
                error = self._transport_error(exc, target, body)
                retry_after = None
            except httpcore.TimeoutException as exc:  # read, write or pool timeout: never sent again
                if isinstance(exc, httpcore.ReadTimeout):
                    message = f"no answer from {target} within {self.timeout:g} s"
                else:
                    message = f"could not send the request to {target} within {self.timeout:g} s ({type(exc).__name__})"
                raise RemoteTimeoutError(message, url=target) from None
            except _OTHER_FAILURES as exc:  # proxy or protocol trouble: not a server that could come back
                raise ServerUnavailableError(f"the request to {target} failed: {exc!r}", url=target) from None
            else:
                if status != 503:
                    return self._decode(status, data, target)
                error = self._status_error(status, data, target)
            if attempt >= retries:
                if attempt:
                    error = type(error)(f"{error.message} (gave up after {attempt + 1} attempts in "
                                        f"{time.monotonic() - start:.1f} s)", url=error.url, status=error.status,
                                        error_type=error.error_type)
                raise error
            delay = self._delay(attempt, retry_after)
            log.warning("%s; retrying in %.1f s (retry %d of %d)", error.message, delay, attempt + 1, retries)
            time.sleep(delay)
            attempt += 1

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        """Exponential backoff with a little jitter (so that clients of a restarted server do not
        all come back at once), at least a 503's ``Retry-After``, at most ``max_backoff``."""
        delay = min(self.max_backoff, self.backoff * 2.0**attempt) * random.uniform(0.8, 1.0)
        try:
            delay = max(delay, min(self.max_backoff, float(retry_after))) if retry_after else delay
        except ValueError:
            pass  # an HTTP-date Retry-After: use the backoff
        return delay

    def _transport_error(self, exc: Exception, target: str, body: bytes | None) -> RemoteCalculatorError:
        if isinstance(exc, _NOT_CONNECTED):
            return ServerUnavailableError(
                f"cannot reach the equiformer-calc server at {self.url} ({exc or type(exc).__name__}); is it running "
                f"('equiformer-calc serve') and is the address right?", url=target)
        hint = ""
        if body is not None and len(body) > (1 << 20):
            hint = f"; the server may have refused the {len(body)}-byte request body as too large"
        return ServerUnavailableError(f"the connection to {target} was dropped ({exc!r}){hint}", url=target)

    @staticmethod
    def _status_error(status: int, data: bytes, target: str) -> RemoteCalculatorError:
        """The error for a non-2xx answer, with the server's error type and message."""
        decoded = _decode_json(data)
        error = decoded.get("error") if isinstance(decoded, dict) else None
        if isinstance(error, dict):
            error_type, message = str(error.get("type")), str(error.get("message"))
        else:
            error_type = "http_error"
            message = data[:300].decode("utf-8", "replace") or _reason(status)
        text = f"server refused the request ({status} {error_type}): {message}"
        cls: type[RemoteCalculatorError]
        if status == 401:
            cls = AuthenticationError
        elif status == 413:
            cls = RequestTooLargeError
        elif status == 504:
            cls = RemoteTimeoutError
        else:
            cls = ServerRejectedError
        return cls(text, url=target, status=status, error_type=error_type)

    @classmethod
    def _decode(cls, status: int, data: bytes, target: str) -> Any:
        if not 200 <= status < 300:
            raise cls._status_error(status, data, target)
        decoded = _decode_json(data)
        if decoded is None:
            raise ServerRejectedError(f"{target} answered {status} without a JSON body", url=target, status=status)
        return decoded

    # ------------------------------------------------------------------ pickling (no sockets)
    def __getstate__(self) -> dict[str, Any]:
        skip = ("_pool", "_pool_lock", "_origin", "_prefix", "_urls", "_headers", "_timeouts", "atoms", "results")
        return {k: v for k, v in self.__dict__.items() if k not in skip}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pool = None
        self._pool_lock = threading.Lock()
        self._prepare_requests()
        self.atoms = None
        self.results = {}
