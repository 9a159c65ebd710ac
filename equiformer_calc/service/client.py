"""ASE calculator that evaluates structures on an ``equiformer-calc serve`` server over HTTP.

Standard library only (``http.client``): one persistent keep-alive connection per thread, so a
relaxation or an MD run pays for one TCP handshake, and one calculator may be shared by threads.

>>> calc = RemoteEquiformerCalculator("http://127.0.0.1:8000", token=os.environ.get("EQUIFORMER_CALC_TOKEN"))
>>> atoms.calc = calc; atoms.get_forces()
>>> calc.predict([atoms1, atoms2])          # many structures in one request
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import urllib.parse
from typing import Any, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from ..calculators.base import reject_unknown_keywords

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
        if key in ("energy", "free_energy"):
            out[key] = float(value)
        elif key == "forces":
            out[key] = np.asarray(value, dtype=np.float64).reshape(-1, 3)
        else:
            out[key] = np.asarray(value, dtype=np.float64)
    if "energy" in out:
        out.setdefault("free_energy", out["energy"])
    return out


class RemoteEquiformerCalculator(Calculator):
    """The :class:`~equiformer_calc.calculator.EquiformerCalculator` interface, evaluated by a server.

    ``url`` is the server's base address (``http://host:port``); ``token`` its bearer token
    (default ``$EQUIFORMER_CALC_TOKEN``); ``timeout`` the seconds to wait for one answer. Stress is
    available for systems periodic in 3D only. Errors are :class:`RemoteCalculatorError`
    subclasses carrying the server's message. ``predict(list_of_atoms)`` evaluates many
    structures in as few requests as the server's atom limit allows.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    #: the keywords this calculator accepts besides ASE's base ones (anything else is a TypeError)
    keywords = ("url", "token", "timeout")

    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, timeout: float = 300.0,
                 **kwargs: Any) -> None:
        reject_unknown_keywords(type(self).__name__, kwargs, self.keywords)
        super().__init__(**kwargs)
        import os

        parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"url must look like http://host:port, got {url!r}")
        self.url = urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path.rstrip("/"), "", ""))
        self._scheme = parsed.scheme
        self._host = parsed.hostname
        self._port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self._prefix = parsed.path.rstrip("/")
        self.token = token if token is not None else os.environ.get("EQUIFORMER_CALC_TOKEN")
        self.timeout = float(timeout)
        self._local = threading.local()
        self._info: dict[str, Any] | None = None

    # ------------------------------------------------------------------ ASE interface
    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        assert self.atoms is not None
        periodic = bool(self.atoms.pbc.all())
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError(
                f"stress is only defined for systems periodic in all three directions (pbc={self.atoms.pbc.tolist()})"
            )
        props = ["energy", "forces", "energies"] + (["stress"] if periodic else [])
        self.results = self._post_predict([atoms_to_json(self.atoms)], props)[0]

    def predict(
        self, structures: Sequence[Atoms], properties: Sequence[str] = ("energy", "forces")
    ) -> list[dict[str, Any]]:
        """Energies (and forces, stress...) of many structures; one dict of numpy arrays per
        structure, in order. Requests are split to respect the server's atoms-per-request limit."""
        structures = list(structures)
        if not structures:
            return []
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
        """``GET /health`` (raises :class:`ServerUnavailableError` when the server is down)."""
        return self._request("GET", "/health")

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ------------------------------------------------------------------ transport
    def _max_atoms_per_request(self) -> int | None:
        try:
            return int(self.info()["limits"]["max_atoms_per_request"])
        except (RemoteCalculatorError, KeyError, TypeError, ValueError, IndexError):
            return None  # the server will say 413 if needed

    def _post_predict(self, structures: list[dict[str, Any]], properties: Sequence[str]) -> list[dict[str, Any]]:
        body = json.dumps({"structures": structures, "properties": list(properties)}).encode()
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

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection and whether it is a reused one."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.timeout)
        self._local.conn = conn
        return conn, False

    def _request(self, method: str, path: str, payload: Any = None, body: bytes | None = None) -> Any:
        if payload is not None:
            body = json.dumps(payload).encode()
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        target = f"{self.url}{path}"
        for attempt in (0, 1):
            conn, reused = self._connection()
            try:
                conn.request(method, self._prefix + path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except TimeoutError:  # socket.timeout is an alias
                self.close()
                raise RemoteTimeoutError(f"no answer from {target} within {self.timeout:g} s", url=target) from None
            except (http.client.HTTPException, OSError) as exc:
                self.close()
                if reused and attempt == 0:
                    # the server closed an idle keep-alive connection: reconnect once (predictions
                    # are idempotent, so resending is safe)
                    log.debug("stale keep-alive connection to %s (%s); reconnecting", self.url, exc)
                    continue
                if isinstance(exc, (http.client.HTTPException, ConnectionResetError, BrokenPipeError)):
                    hint = ""
                    if body is not None and len(body) > (1 << 20):
                        hint = f"; the server may have refused the {len(body)}-byte request body as too large"
                    raise ServerUnavailableError(f"the connection to {target} was dropped ({exc!r}){hint}",
                                                 url=target) from None
                # refused, unreachable, DNS failure
                raise ServerUnavailableError(
                    f"cannot reach the equiformer-calc server at {self.url} ({exc}); is it running "
                    f"('equiformer-calc serve') and is the address right?", url=target) from None
            if response.will_close:
                self.close()
            return self._decode(response.status, data, target)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _decode(status: int, data: bytes, target: str) -> Any:
        try:
            decoded = json.loads(data) if data else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            decoded = None
        if 200 <= status < 300:
            if decoded is None:
                raise ServerRejectedError(f"{target} answered {status} without a JSON body", url=target, status=status)
            return decoded
        error = decoded.get("error") if isinstance(decoded, dict) else None
        if isinstance(error, dict):
            error_type, message = str(error.get("type")), str(error.get("message"))
        else:
            error_type = "http_error"
            message = data[:300].decode("utf-8", "replace") or http.client.responses.get(status, "")
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
        raise cls(text, url=target, status=status, error_type=error_type)

    # ------------------------------------------------------------------ pickling (no sockets)
    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_local", "atoms", "results")}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()
        self.atoms = None
        self.results = {}
