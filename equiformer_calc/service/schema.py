"""The service's wire format: request and response schemas (pydantic; the OpenAPI document is
built from them), the error type and the server's limits (how a request is read and checked is
:mod:`.parsing`; no FastAPI app here: :mod:`.app` builds it)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError


__all__ = [
    "Property", "StructureIn", "PredictRequest", "PredictionOut", "ModelRef", "PredictResponse", "ModelInfo",
    "ModelsResponse", "HealthResponse", "ErrorDetail", "ErrorResponse", "Limits", "ApiError", "STATUS_TYPES",
    "format_validation_error", "result_json",
]

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
    energy_uncertainty: float | None = Field(
        None, description="eV: the spread of the checkpoint's committee (when it ships one)")
    forces_uncertainty: list[float] | None = Field(None, description="eV/Angstrom per atom (committee spread)")


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


FIELD_NAMES = set(StructureIn.model_fields) | set(PredictRequest.model_fields)


# ---------------------------------------------------------------------------------- errors
class ApiError(Exception):
    """An error answered to the client as ``{"error": {"type", "message"}}`` with ``status``."""

    def __init__(self, status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.headers = headers

    def __reduce__(self) -> tuple[Any, ...]:  # crosses the parser process boundary intact
        return (type(self), (self.status, self.type, self.message, self.headers))


STATUS_TYPES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                 413: "too_large", 415: "unsupported_media_type", 422: "invalid_request", 500: "internal", 503: "unavailable",
                 504: "timeout", 507: "insufficient_memory"}


def format_validation_error(exc: ValidationError | RequestValidationError) -> str:
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
            elif item in FIELD_NAMES:
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


def result_json(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in result.items():
        scalar = key in ("energy", "free_energy", "energy_uncertainty")
        out[key] = float(value) if scalar else np.asarray(value, dtype=np.float64).tolist()
    return out
