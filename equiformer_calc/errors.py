"""One table of the package's errors: exception -> HTTP status, error type, CLI exit code, hint.

Both the HTTP service (:mod:`equiformer_calc.service.routes`) and the command line
(:mod:`equiformer_calc.cli`) answer an exception by looking it up here, so a new error kind is
one row of :data:`ERRORS` and the service and the CLI agree on it.

Rows name their exception class by import path (``"equiformer_calc.graph:StructureError"``), and a
lookup only resolves the classes whose module is already imported: an exception cannot be an
instance of a class that was never imported, so this module imports nothing of the package and
sits at the bottom of the layers (the CLI's error path stays torch-free). The first row whose
class the exception is an instance of wins: subclasses come before their bases.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

__all__ = ["ErrorKind", "ERRORS", "UNEXPECTED", "classify"]


@dataclass(frozen=True)
class ErrorKind:
    """How one kind of exception is answered: ``status`` and ``type`` for HTTP
    (``{"error": {"type", "message"}}``), ``exit_code`` for the CLI (2: wrong input, 1: a bug),
    ``hint`` (what the user can do; shown by the CLI) and extra HTTP ``headers``."""

    exception: str
    status: int
    type: str
    exit_code: int
    hint: str
    headers: tuple[tuple[str, str], ...] = ()


_SMALLER = "use a smaller structure"

#: the table, most specific first (an exception matches the first row it is an instance of)
ERRORS: tuple[ErrorKind, ...] = (
    # the model worker of the service
    ErrorKind("equiformer_calc.service.worker:WorkerCrashedError", 500, "worker_crashed", 1,
              "the model worker died; a new one was started, retry the request"),
    ErrorKind("equiformer_calc.service.worker:WorkerTimeoutError", 504, "timeout", 1,
              "the model call took too long; send smaller requests"),
    ErrorKind("equiformer_calc.service.batcher:RequestTimeoutError", 504, "timeout", 1,
              "the request waited too long; retry later or send smaller requests"),
    ErrorKind("equiformer_calc.service.batcher:QueueFullError", 503, "overloaded", 1,
              "the server is busy; retry later", (("Retry-After", "1"),)),
    ErrorKind("equiformer_calc.service.batcher:BatcherClosedError", 503, "shutting_down", 1,
              "the server is shutting down; retry on another replica"),
    # inputs
    ErrorKind("equiformer_calc.integrations.d3:D3ElementError", 422, "unsupported_element", 2,
              "D3 has parameters for H to Lr (Z 1-103) only: drop --dispersion or these elements"),
    ErrorKind("equiformer_calc.memory:MemoryBudgetError", 507, "insufficient_memory", 2,
              f"{_SMALLER}, --memory low where the command has it, or free memory"),
    ErrorKind("equiformer_calc.graph:BudgetError", 413, "too_large", 2,
              f"{_SMALLER}, or raise the memory budget where the command has one"),
    ErrorKind("equiformer_calc.model:UnknownElementError", 422, "unknown_element", 2,
              "use a checkpoint trained on these elements (--checkpoint)"),
    ErrorKind("equiformer_calc.graph:StructureError", 422, "invalid_structure", 2,
              "check the input structure (positions, cell, pbc)"),
    ErrorKind("equiformer_calc.runtime:DeviceUnavailableError", 422, "device_unavailable", 2,
              "use device cpu, or a machine and torch build with that device"),
    ErrorKind("equiformer_calc.io:OutputIsInputError", 422, "invalid_request", 2,
              "choose an output path that is not one of the inputs"),
    ErrorKind("equiformer_calc.integrations.ipi:IPIConnectionError", 503, "no_ipi_server", 2,
              "start i-PI first, and check --unix/--port against its input (or raise --wait)"),
    ErrorKind("equiformer_calc.reference:ReferenceCheckpointError", 422, "invalid_checkpoint", 2,
              "give a checkpoint of the reference Equiformer code (.pt state_dict or .safetensors)"),
    ErrorKind("equiformer_calc.checkpoint:CheckpointError", 422, "invalid_checkpoint", 2,
              "give a shipped checkpoint name (e.g. emt-small) or an existing .safetensors file"),
    ErrorKind("builtins:FileNotFoundError", 422, "invalid_request", 2, "check the path"),
    ErrorKind("builtins:IsADirectoryError", 422, "invalid_request", 2, "check the path"),
    ErrorKind("builtins:NotADirectoryError", 422, "invalid_request", 2, "check the path"),
    ErrorKind("builtins:PermissionError", 422, "invalid_request", 2, "check the path"),
    ErrorKind("builtins:MemoryError", 507, "insufficient_memory", 2, "use a smaller input"),
    ErrorKind("builtins:ValueError", 422, "invalid_request", 2, "see --help for the expected values"),
    ErrorKind("builtins:KeyError", 422, "invalid_request", 2, "see --help for the expected values"),
    ErrorKind("builtins:IndexError", 422, "invalid_request", 2, "see --help for the expected values"),
    ErrorKind("builtins:TypeError", 422, "invalid_request", 2, "see --help for the expected values"),
)

#: anything not in the table: a bug
UNEXPECTED = ErrorKind("builtins:Exception", 500, "internal", 1,
                       "this looks like a bug; run with -v for the traceback and report it")


def _resolve(path: str) -> type | None:
    module_name, _, name = path.partition(":")
    module = sys.modules.get(module_name)  # never imports: see the module docstring
    cls = getattr(module, name, None) if module is not None else None
    return cls if isinstance(cls, type) else None


def classify(exc: BaseException, kinds: tuple[ErrorKind, ...] = ERRORS) -> ErrorKind:
    """The first row of ``kinds`` whose exception class ``exc`` is an instance of (else
    :data:`UNEXPECTED`)."""
    for kind in kinds:
        cls = _resolve(kind.exception)
        if cls is not None and isinstance(exc, cls):
            return kind
    return UNEXPECTED


def _check_table() -> None:  # pragma: no cover - import-time sanity of the table itself
    seen: set[Any] = set()
    for kind in ERRORS:
        assert kind.exception not in seen, f"duplicate row {kind.exception}"
        seen.add(kind.exception)


_check_table()
