"""``POST /v1/vibrations``: the harmonic vibrations of one structure, every finite-difference
displacement evaluated in one batched job of the server's batcher.

The body is exactly what ``POST /v1/predict`` reads (JSON ``{"structures": [...]}``, a JSON field
``"extxyz"``, or an extxyz body), holding one structure; it is read by the same bounded parser.
The analysis is set by query parameters:

* ``indices`` -- the atoms to displace, comma-separated (``indices=36,37``) or repeated; or
* ``mask`` -- one 0/1 (or false/true) per atom, comma-separated; neither: the adsorbate (every
  non-metal atom, :func:`~equiformer_calc.workflows.vibrations.adsorbate_indices`);
* ``delta`` -- the displacement in Angstrom (default 0.01, at most :data:`MAX_DELTA`);
* ``nfree`` -- 2 or 4 displacements per degree of freedom (default 2);
* ``soft_threshold`` -- real modes below this many cm^-1 are reported as soft (default 50).

The numbers are those of :func:`equiformer_calc.workflows.vibrations.vibrate` with the served model
(the same code forms the displacements, the Hessian and the modes); the answer lists every
frequency in cm^-1 (imaginary ones as negative numbers, and again by magnitude under
``imaginary_cm-1``), the zero-point energy of the real modes, the Hessian of the displaced atoms
and ``n_calls``, the batched jobs submitted (1: all ``n_evaluations`` structures in one job; the
batcher may merge it with other requests, and the model splits it at its atom budget).
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any, Callable, Sequence

import numpy as np
from ase import Atoms
from fastapi import Depends, Request
from fastapi.responses import Response

from ..graph import Structure, estimate_edges, structure_from_atoms
from ..workflows.vibrations import SOFT_THRESHOLD_CM, VibrationResult, count_evaluations, select_atoms, vibrate_many
from .parsing import check_edges, finish_structures
from .routes import _api_error, _read_body, _state, authorize, json_response, off_loop
from .schema import ApiError, ErrorResponse
from .state import ServiceState

__all__ = ["vibrations", "ROUTES", "MAX_DELTA", "QUERY_PARAMETERS"]

#: the largest displacement accepted (Angstrom): beyond it finite differences no longer give the harmonic modes
MAX_DELTA = 0.1
#: the query parameters the endpoint reads (any other is refused, so that a typo is not ignored)
QUERY_PARAMETERS = ("indices", "mask", "delta", "nfree", "soft_threshold")


def _invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_request", message)


def _query_list(values: Sequence[str]) -> list[str]:
    """Repeated and comma-separated values of one query parameter, in order."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _query_number(request: Request, name: str, kind: Callable[[str], Any], default: Any) -> Any:
    values = request.query_params.getlist(name)
    if not values:
        return default
    if len(values) > 1:
        raise _invalid(f"query parameter {name!r} given {len(values)} times; give it once")
    try:
        value = kind(values[0])
    except ValueError:
        raise _invalid(f"query parameter {name}={values[0]!r} is not a{'n integer' if kind is int else ' number'}") from None
    if kind is float and not np.isfinite(value):
        raise _invalid(f"query parameter {name}={values[0]!r} must be a finite number")
    return value


def _settings(request: Request) -> dict[str, Any]:
    """The analysis settings from the query string, or a 422 naming the parameter at fault."""
    unknown = sorted(set(request.query_params.keys()) - set(QUERY_PARAMETERS))
    if unknown:
        raise _invalid(f"unknown query parameter(s) {unknown}; /v1/vibrations reads {list(QUERY_PARAMETERS)}")
    indices_q = _query_list(request.query_params.getlist("indices"))
    mask_q = _query_list(request.query_params.getlist("mask"))
    if indices_q and mask_q:
        raise _invalid("give either 'indices' or 'mask', not both")
    selection: list[int] | np.ndarray | None = None
    if indices_q:
        try:
            selection = [int(i) for i in indices_q]
        except ValueError:
            raise _invalid(f"indices must be atom indices (integers), got {','.join(indices_q)!r}") from None
    elif mask_q:
        truth = {"1": True, "true": True, "0": False, "false": False}
        bad = [m for m in mask_q if m.lower() not in truth]
        if bad:
            raise _invalid(f"mask entries must be 0/1 or false/true, got {bad[:5]}")
        selection = np.array([truth[m.lower()] for m in mask_q], dtype=bool)
    elif "indices" in request.query_params or "mask" in request.query_params:
        raise _invalid("'indices' / 'mask' is empty: no atom to displace")
    delta = _query_number(request, "delta", float, 0.01)
    if not 0 < delta <= MAX_DELTA:
        raise _invalid(f"delta must lie in (0, {MAX_DELTA:g}] Angstrom, got {delta:g}")
    nfree = _query_number(request, "nfree", int, 2)
    if nfree not in (2, 4):
        raise _invalid(f"nfree must be 2 or 4 (central differences with 2 or 4 displacements), got {nfree}")
    soft = _query_number(request, "soft_threshold", float, SOFT_THRESHOLD_CM)
    if soft < 0:
        raise _invalid(f"soft_threshold must be >= 0 cm^-1, got {soft:g}")
    return {"indices": selection, "delta": delta, "nfree": nfree, "soft_threshold": soft}


class _BatcherCalculator:
    """What :func:`~equiformer_calc.workflows.vibrations.vibrate_many` needs of a calculator
    (``predict``), answered by the server's batcher: one job per call, waited for in this thread."""

    def __init__(self, state: ServiceState, timeout_s: float) -> None:
        self.state = state
        self.deadline = time.monotonic() + timeout_s

    def predict(self, structures: Sequence[Atoms], properties: Sequence[str] = ("energy", "forces")) -> list[dict]:
        converted = [structure_from_atoms(a) for a in structures]
        try:
            future = self.state.batcher.submit(converted, list(properties))
        except Exception as exc:  # closed or full: answered from the error table
            raise _api_error(exc) from None
        try:
            return future.result(timeout=max(self.deadline - time.monotonic(), 0.0))
        except concurrent.futures.TimeoutError:
            future.cancel()  # no-op if the model is already running it
            raise ApiError(504, "timeout", f"no result within the server's request timeout of "
                                           f"{self.state.limits.request_timeout_s:g} s") from None


def _as_atoms(structure: Structure) -> Atoms:
    return Atoms(numbers=structure.numbers, positions=structure.positions, cell=structure.cell, pbc=structure.pbc,
                 tags=structure.tags)


def _prepare(state: ServiceState, content_type: str, body: bytes, settings: dict[str, Any]) -> tuple[Atoms, list[int]]:
    """Parse the one structure (parser process), check its elements, the displaced atoms and the
    size of the whole job (all displaced copies) against the server's limits."""
    deadline = time.monotonic() + state.parsers.timeout_s
    packed, _properties, failed = state.parsers.parse(content_type, body, [], state.limits)
    structures = finish_structures(packed, failed, state.predictor, state.check_elements, deadline, state.limits,
                                   state.known_numbers)
    if len(structures) != 1:
        raise _invalid(f"/v1/vibrations takes one structure, got {len(structures)}")
    structure = structures[0]
    cutoff = float(state.predictor.cutoff)
    check_edges([structure], cutoff, state.limits, state.bytes_per_edge, state.mode, deadline)
    atoms = _as_atoms(structure)
    indices = select_atoms(atoms, settings["indices"])  # ValueError (422) for a bad selection
    evaluations = count_evaluations(len(indices), settings["nfree"])
    total = evaluations * len(structure)
    if total > state.limits.max_atoms_per_request:
        raise ApiError(413, "too_large", f"displacing {len(indices)} atom(s) with nfree={settings['nfree']} needs "
                                         f"{evaluations} evaluations of {len(structure)} atoms ({total} atoms); this "
                                         f"server accepts at most {state.limits.max_atoms_per_request} atoms per "
                                         "request: displace fewer atoms (indices)"
                                         + (" or use nfree=2" if settings["nfree"] == 4 else ""))
    edges = evaluations * (estimate_edges(structure, cutoff) if len(structure) > 1 or structure.pbc.any() else 0)
    if edges > state.limits.max_edges_per_request:
        raise ApiError(413, "too_large", f"the {evaluations} displaced copies make about {edges:,} edges; this server "
                                         f"accepts at most {state.limits.max_edges_per_request:,} edges per request: "
                                         "displace fewer atoms (indices)")
    return atoms, indices


def _answer(res: VibrationResult, model_ref: dict[str, Any]) -> dict[str, Any]:
    f = res.frequencies
    kinds = ["imaginary" if x < 0 else "soft" if x < res.soft_threshold else "real" for x in f]
    return {
        "indices": res.indices,
        "frequencies_cm-1": [float(x) for x in f],
        "kinds": kinds,
        "imaginary_cm-1": [float(-x) for x in res.imaginary],
        "soft_cm-1": [float(x) for x in res.soft],
        "zero_point_energy": res.zero_point_energy,
        "energy": res.energy,
        "hessian": np.asarray(res.hessian, dtype=float).tolist(),
        "delta": res.delta,
        "nfree": res.nfree,
        "n_evaluations": count_evaluations(len(res.indices), res.nfree),
        "n_calls": res.n_calls,
        "notes": list(res.notes),
        "model": model_ref,
    }


def _run(state: ServiceState, atoms: Atoms, indices: list[int], settings: dict[str, Any]) -> dict[str, Any]:
    calc = _BatcherCalculator(state, state.limits.request_timeout_s)
    evaluations = count_evaluations(len(indices), settings["nfree"])
    res = vibrate_many([atoms], [indices], calculator=calc, delta=settings["delta"], nfree=settings["nfree"],
                       soft_threshold=settings["soft_threshold"], batch_size=evaluations, progress=False,
                       warn=False)[0]
    return _answer(res, state.model_ref)


async def vibrations(request: Request) -> Response:
    """Harmonic vibrational frequencies (cm^-1; imaginary ones negative), zero-point energy (eV)
    and Hessian (eV/A^2) of the displaced atoms of one structure, by finite differences whose
    displaced copies are evaluated in one batched job. Body: as for /v1/predict, one structure;
    query: ``indices`` or ``mask``, ``delta``, ``nfree``, ``soft_threshold``."""
    state = _state(request)
    try:
        state.arriving.value += 1  # until the job is prepared (the batcher's wait for arriving requests)
        try:
            body = await _read_body(request, state.limits.max_body_bytes)  # read first: the client sees any 4xx
            settings = _settings(request)
            content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
            atoms, indices = await off_loop(_prepare, state, content_type, body, settings)
        finally:
            state.arriving.value -= 1
        payload = await off_loop(_run, state, atoms, indices, settings)
    except ApiError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bad selection (ValueError), a model error: the error table
        raise _api_error(exc) from None
    return json_response(payload)


_BODY = {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
    "chemical/x-extxyz": {"schema": {"type": "string"}},
    "text/plain": {"schema": {"type": "string", "description": "extxyz text (one frame)"}}}}
_PARAMETERS = [
    {"name": name, "in": "query", "required": False, "schema": {"type": kind}, "description": text}
    for name, kind, text in (
        ("indices", "string", "atoms to displace, comma-separated (or repeated); default: the adsorbate (non-metals)"),
        ("mask", "string", "instead of indices: one 0/1 per atom, comma-separated"),
        ("delta", "number", f"displacement in Angstrom, in (0, {MAX_DELTA:g}]; default 0.01"),
        ("nfree", "integer", "displacements per coordinate, 2 or 4; default 2"),
        ("soft_threshold", "number", f"real modes below this (cm^-1) are 'soft'; default {SOFT_THRESHOLD_CM:g}"),
    )
]
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 413, 415, 500, 503, 504, 507)}
#: (path, handler, method, FastAPI route options), registered by :func:`~.routes.register`
ROUTES: list[tuple[str, Callable[..., Any], str, dict[str, Any]]] = [
    ("/v1/vibrations", vibrations, "POST", {"dependencies": [Depends(authorize)], "tags": ["model"],
                                            "openapi_extra": {"requestBody": _BODY, "parameters": _PARAMETERS},
                                            "responses": _ERRORS}),
]
