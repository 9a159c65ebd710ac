"""Reading a request body into validated structures, with work bounded by its bytes and its time.

Two halves. :func:`parse_body` runs in a parser process (:class:`ParserPool`): JSON decoding
(pydantic), extxyz reading (ASE) and the array checks of every structure. Those are single C
calls that hold the GIL for seconds on a 16 MiB body, so in the server process they would freeze
the event loop (and ``/health``); in their own process they cost the server nothing, and a parse
that runs past the server's parse budget is killed (413). The extxyz header of every frame is
checked against the lines that follow and the atom limits before ASE reads a frame
(:func:`prescan_extxyz`), so a 60-byte body claiming 10^9 atoms is refused at once.

:func:`finish_structures` runs in a thread of the server: it unpacks the parser's arrays, checks
the elements against the model (and D3's table), estimates the edges and checks stress requests.
Everything there is a Python loop over structures, which lets the event loop run in between.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any, Sequence

import numpy as np
from pydantic import ValidationError

from ..graph import Structure, StructureError, estimate_edges
from ..model import UnknownElementError
from ..predictor import ALL_PROPERTIES
from .packing import PackedStructures, pack_structures, unpack_structures
from .schema import ApiError, Limits, PredictRequest, StructureIn, format_validation_error
from .worker import serve_pipe

__all__ = [
    "EXTXYZ_TYPES", "ParserPool", "parse_body", "prescan_extxyz", "read_extxyz", "structure_numbers", "check_sizes",
    "check_edges", "check_deadline", "finish_structures", "parse_properties",
]

log = logging.getLogger(__name__)

#: Content-Types read as extxyz text
EXTXYZ_TYPES = {"chemical/x-extxyz", "chemical/x-xyz", "text/x-extxyz", "text/plain"}
_JSON_TYPES = ("application/json", "application/x-www-form-urlencoded")  # curl -d's default is read as JSON


# ---------------------------------------------------------------------------------- checks
def structure_numbers(k: int, s: StructureIn) -> list[int]:
    """Atomic numbers of one JSON structure (``numbers`` or ``symbols``), or a 422 naming it."""
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


def check_sizes(sizes: Sequence[int], limits: Limits) -> None:
    """413 for a structure or a request over the atom limits (422 for no structures)."""
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


def check_deadline(deadline: float | None, limits: Limits) -> None:
    """413 once ``time.monotonic()`` is past ``deadline`` (the parse budget of a request)."""
    if deadline is not None and time.monotonic() > deadline:
        raise ApiError(413, "too_large", "the request could not be read and checked within the server's parse budget")


def check_edges(structures: Sequence[Structure], cutoff: float, limits: Limits, bytes_per_edge: float,
                mode: str = "fast", deadline: float | None = None) -> None:
    """413 for a structure or a request whose estimated edge count is over its limit (the estimate
    is cheap: no neighbour search; see :func:`~equiformer_calc.graph.estimate_edges`), or past
    ``deadline``."""
    budget = "" if limits.memory_budget_bytes is None else (
        f" (the server's memory budget of {limits.memory_budget_bytes / 2**30:.3g} GiB at about "
        f"{bytes_per_edge / 1024:.1f} KiB per edge in memory='{mode}' mode)")
    total = 0
    for k, structure in enumerate(structures):
        if k % 256 == 0:
            check_deadline(deadline, limits)
        try:
            # a lone atom of a molecule has no edges (what the estimate gives, 0.5 ms sooner)
            edges = 0 if len(structure) <= 1 and not structure.pbc.any() else estimate_edges(structure, cutoff)
        except StructureError as exc:
            raise ApiError(422, "invalid_structure", f"structure {k}: {exc}") from None
        if edges > limits.max_edges_per_structure:
            raise ApiError(413, "too_large", f"structure {k} ({len(structure)} atoms) makes about {edges:,} edges "
                                             f"with the {cutoff:g} A cutoff; this server accepts at most "
                                             f"{limits.max_edges_per_structure:,} edges per structure{budget}")
        total += edges
    if total > limits.max_edges_per_request:
        raise ApiError(413, "too_large", f"the request's {len(structures)} structures make about {total:,} edges; "
                                         f"this server accepts at most {limits.max_edges_per_request:,} edges per "
                                         f"request{budget}")


def parse_properties(values: Sequence[str]) -> list[str]:
    """``?properties=energy,forces&properties=stress`` -> the property names (422 for unknown ones)."""
    props: list[str] = []
    for value in values:
        props += [p.strip() for p in value.split(",") if p.strip()]
    unknown = [p for p in props if p not in ALL_PROPERTIES]
    if unknown:
        raise ApiError(422, "invalid_request", f"unknown properties {unknown}; available: {list(ALL_PROPERTIES)}")
    return props or ["energy", "forces"]


# ---------------------------------------------------------------------------------- extxyz
def prescan_extxyz(text: str, limits: Limits) -> list[int]:
    """The declared atom count of every frame, checked before any frame is read: a count over the
    atom limits is 413, a count larger than the lines that follow its header is 422. Work is
    proportional to the number of lines (frames end where ASE stops: at a blank count line)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the text's final newline ends a line, it does not start one
    sizes: list[int] = []
    i = 0
    while i < len(lines) and lines[i].strip():
        try:
            n = int(lines[i])
        except ValueError:
            break  # ASE names the bad header line
        k = len(sizes)
        if n > limits.max_atoms_per_structure:
            raise ApiError(413, "too_large", f"extxyz frame {k} declares {n} atoms; this server accepts at most "
                                             f"{limits.max_atoms_per_structure} atoms per structure")
        if sum(sizes) + n > limits.max_atoms_per_request:
            raise ApiError(413, "too_large", f"extxyz frames 0-{k} declare {sum(sizes) + n} atoms; this server accepts "
                                             f"at most {limits.max_atoms_per_request} atoms per request")
        follow = len(lines) - i - 2  # after the count and comment lines
        if n > follow:
            raise ApiError(422, "invalid_extxyz", f"extxyz frame {k} declares {n} atoms but only {max(follow, 0)} line(s) "
                                                  f"follow its header")
        sizes.append(max(n, 0))
        i += 2 + max(n, 0)
        while i < len(lines) and lines[i].startswith("VEC"):  # plain-xyz lattice vectors, as ASE reads them
            i += 1
    return sizes


def read_extxyz(text: str, limits: Limits) -> list[tuple[Any, Any, Any, Any]]:
    """extxyz text -> (numbers, positions, cell, pbc) per frame, after :func:`prescan_extxyz`."""
    from ase.io import read

    if not text.strip():
        raise ApiError(400, "invalid_extxyz", "the extxyz input is empty")
    prescan_extxyz(text, limits)
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


# ---------------------------------------------------------------------------------- the parser's half
def _raw_structures(content_type: str, body: bytes, query_properties: Sequence[str],
                    limits: Limits) -> tuple[list[tuple[Any, Any, Any, Any]], list[str]]:
    if not body.strip():
        raise ApiError(400, "invalid_json" if content_type not in EXTXYZ_TYPES else "invalid_extxyz",
                       "the request body is empty")
    if content_type in EXTXYZ_TYPES:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError(400, "invalid_extxyz", f"the extxyz body is not UTF-8 text ({exc})") from None
        properties = parse_properties(query_properties)
        raw = read_extxyz(text, limits)
        check_sizes([len(r[0]) for r in raw], limits)
        return raw, properties
    if content_type not in _JSON_TYPES and not content_type.endswith("+json"):
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
        raw = read_extxyz(req.extxyz, limits)
        check_sizes([len(r[0]) for r in raw], limits)
        return raw, properties
    items = req.structures or []
    check_sizes([max(len(s.positions), len(s.numbers or s.symbols or [])) for s in items], limits)
    for k, s in enumerate(items):
        bad = next((i for i, row in enumerate(s.positions) if len(row) != 3), None)
        if bad is not None:
            raise ApiError(422, "invalid_structure", f"structure {k}: positions[{bad}] has {len(s.positions[bad])} "
                                                     f"coordinates; positions must have shape (N, 3)")
    return [(structure_numbers(k, s), s.positions, s.cell, s.pbc) for k, s in enumerate(items)], properties


def parse_body(content_type: str, body: bytes, query_properties: Sequence[str],
               limits: Limits) -> tuple[PackedStructures, list[str], tuple[int, str] | None]:
    """A request body -> (packed structures, properties, the first array error or None).

    The arrays of every structure are checked (:meth:`Structure.from_arrays`) up to the first
    that fails; its index and message come back separately so that the server reports it only if
    no earlier structure has an unsupported element (the order the errors had in one process)."""
    raw, properties = _raw_structures(content_type, body, query_properties, limits)
    structures: list[Structure] = []
    failed: tuple[int, str] | None = None
    for k, (numbers, positions, cell, pbc) in enumerate(raw):
        try:
            structures.append(Structure.from_arrays(numbers, positions, cell, pbc))
        except StructureError as exc:
            failed = (k, str(exc))
            break
    return pack_structures(structures), properties, failed


def finish_structures(packed: PackedStructures, failed: tuple[int, str] | None, predictor: Any,
                      check_elements: Any = None, deadline: float | None = None,
                      limits: Limits | None = None, known_numbers: Sequence[int] | None = None) -> list[Structure]:
    """The server's half: structures with elements the model (and ``check_elements``, e.g. D3's
    table) supports, or the 422 of the first structure at fault (413 past ``deadline``).

    ``known_numbers`` (the model's atomic numbers) allows one check of all atoms at once; only
    when it finds an unsupported element are the structures checked one by one, for the message."""
    structures = unpack_structures(packed)
    if not _all_supported(packed.numbers, known_numbers, check_elements):
        for k, structure in enumerate(structures):
            if k % 256 == 0 and limits is not None:
                check_deadline(deadline, limits)
            try:
                predictor.to_structure(structure)
                if check_elements is not None:
                    check_elements(structure.numbers)
            except UnknownElementError as exc:
                raise ApiError(422, "unknown_element", f"structure {k}: {exc}") from None
            except StructureError as exc:
                raise ApiError(422, "invalid_structure", f"structure {k}: {exc}") from None
            except ValueError as exc:  # D3's element table
                raise ApiError(422, "unsupported_element", f"structure {k}: {exc}") from None
    if failed is not None:
        raise ApiError(422, "invalid_structure", f"structure {failed[0]}: {failed[1]}")
    return structures


def _all_supported(numbers: Any, known_numbers: Sequence[int] | None, check_elements: Any) -> bool:
    if known_numbers is None or not np.isin(numbers, np.asarray(known_numbers)).all():
        return False
    try:
        if check_elements is not None:
            check_elements(numbers)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------- the parser processes
def _parser_main(conn: Connection) -> None:  # pragma: no cover - runs in the child
    import signal

    import ase.io  # noqa: F401 - imported before "ready", not during the first parse and its budget

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops us
    conn.send("ready")

    def handle(message: Any) -> tuple[str, Any]:
        try:
            return ("ok", parse_body(*message))
        except ApiError as exc:
            return ("error", exc)
        except Exception as exc:  # noqa: BLE001 - a bug in parsing: the request gets a 500 naming it
            return ("error", ApiError(500, "internal", f"could not read the request: {type(exc).__name__}: {exc}"))

    serve_pipe(conn, handle)


class _Parser:
    """One parser process and its pipe."""

    def __init__(self, context: Any) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_parser_main, args=(child,), name="equiformer-parser", daemon=True)
        self.process.start()
        child.close()
        self.ready = False

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


class ParserPool:
    """Up to ``size`` parser processes, each reading one request body at a time.

    :meth:`parse` (blocking; the server calls it from a thread) hands a body to an idle parser
    and waits at most ``timeout_s`` for its answer; a parser that runs past it is killed (the
    request gets 413: too much to read within the server's parse budget) and replaced. Bodies of
    at most ``inline_bytes`` are read in the calling thread instead (no process hop for the usual
    small request; at that size the GIL is held for a few milliseconds at most)."""

    def __init__(self, size: int = 2, timeout_s: float = 60.0, start_timeout_s: float = 120.0,
                 inline_bytes: int = 64 << 10) -> None:
        self.size = max(1, int(size))
        self.inline_bytes = int(inline_bytes)
        self.timeout_s = float(timeout_s)
        self.start_timeout_s = float(start_timeout_s)
        self.killed = 0
        self._context = multiprocessing.get_context("spawn")
        self._idle: list[_Parser] = []
        self._slots = threading.BoundedSemaphore(self.size)
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        """Start the parser processes (they become ready in the background)."""
        with self._lock:
            while len(self._idle) < self.size:
                self._idle.append(_Parser(self._context))

    def stop(self) -> None:
        """Stop every idle parser; busy ones are killed when their parse returns."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for parser in idle:
            parser.kill()

    def _take(self) -> _Parser:
        with self._lock:
            if self._closed:
                raise ApiError(503, "shutting_down", "the server is shutting down")
            parser = self._idle.pop() if self._idle else _Parser(self._context)
        if not parser.ready:
            ready = wait([parser.conn, parser.process.sentinel], timeout=self.start_timeout_s)
            if parser.conn not in ready or parser.conn.recv() != "ready":
                parser.kill()
                raise ApiError(500, "internal", "the request parser process did not start")
            parser.ready = True
        return parser

    def _give_back(self, parser: _Parser) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(parser)
                return
        parser.kill()

    def parse(self, content_type: str, body: bytes, query_properties: Sequence[str],
              limits: Limits) -> tuple[PackedStructures, list[str], tuple[int, str] | None]:
        """:func:`parse_body` in a parser process, under the parse budget (small bodies: here)."""
        if len(body) <= self.inline_bytes:
            return parse_body(content_type, body, query_properties, limits)
        with self._slots:
            parser = self._take()
            try:
                parser.conn.send((content_type, body, list(query_properties), limits))
                ready = wait([parser.conn, parser.process.sentinel], timeout=self.timeout_s)
                reply = parser.conn.recv() if parser.conn in ready else None
            except (EOFError, OSError):
                reply = None
            if reply is None:
                self.killed += 1
                alive = parser.process.is_alive()
                parser.kill()
                if alive:
                    raise ApiError(413, "too_large", f"the request body ({len(body):,} bytes) could not be read within "
                                                     f"the server's parse budget of {self.timeout_s:g} s")
                raise ApiError(500, "internal", "the request parser process died while reading this request")
            self._give_back(parser)
        kind, payload = reply
        if kind == "error":
            raise payload
        return payload
