"""The service under hostile input, against a real server process (``equiformer-calc serve``).

Issue 11, failures 1, 2 and 6 on the service side: the SIGFPE input killed the server process;
atom limits did not bound edges or bytes; ``"numbers": [true, true, true]`` was evaluated as H3 and
an atomic number of 10^30 gave a 500. Now model calls run in a worker process (a crash costs that
request a 500 ``worker_crashed`` and a worker restart, never the server), edge estimates over the
limits get 413 with the estimate and the limit, JSON types are strict, and a hypothesis-driven fuzz
of the request schema (read from the server's OpenAPI document) gets no 5xx and no crash.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
from typing import Any

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from equiformer_calc.calculators.local import EquiformerCalculator
from equiformer_calc.service.worker import ABORT_MARKER_ENV

from .test_service import ServerProcess, as_json, checkpoint, http  # noqa: F401 - checkpoint is a fixture

ABORT_X = 777.25  # the test hook's marker: a structure whose first atom sits at this x aborts the worker
MAX_EDGES_PER_STRUCTURE = 3000
MAX_EDGES_PER_REQUEST = 4000


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    proc = ServerProcess(
        checkpoint, tmp_path_factory.mktemp("logs") / "hardening.log", "--dtype", "float64",
        "--max-edges-per-structure", str(MAX_EDGES_PER_STRUCTURE), "--max-edges-per-request",
        str(MAX_EDGES_PER_REQUEST), "--max-wait-ms", "50", "--no-access-log",
        env={ABORT_MARKER_ENV: repr(ABORT_X), "EQUIFORMER_CALC_TOKEN": ""},
    )
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def local(checkpoint) -> EquiformerCalculator:
    return EquiformerCalculator(str(checkpoint), dtype="float64")


def predict(server, body: Any) -> tuple[int, Any]:
    status, answer, _ = http(server.url + "/v1/predict", body, token=None)
    return status, answer


def h2(x0: float = 0.0) -> dict[str, Any]:
    return {"numbers": [1, 1], "positions": [[x0, 0.0, 0.0], [x0 + 0.74, 0.0, 0.0]]}


def test_sigfpe_input_of_the_issue_is_a_422_and_the_server_lives(server):
    status, answer = predict(server, {"structures": [{"numbers": [1, 1], "positions": [[0, 0, 0], [1e6, 0, 0]]}]})
    assert status == 422 and "span 1e+06 A" in answer["error"]["message"], answer
    assert server.proc.poll() is None


@pytest.mark.slow
def test_worker_crash_fails_only_its_request_and_the_server_keeps_serving(server, local):
    good = molecule("H2O")
    expected = local.predict([good])[0]
    crashing = {"structures": [h2(ABORT_X)]}

    def send(k: int) -> tuple[int, tuple[int, Any]]:
        return k, predict(server, crashing if k == 2 else {"structures": [as_json(good)]})

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = dict(pool.map(send, range(6)))
    status, answer = answers.pop(2)
    assert status == 500 and answer["error"]["type"] == "worker_crashed", answer
    assert "SIGABRT" in answer["error"]["message"] and "keeps serving" in answer["error"]["message"]
    for status, answer in answers.values():  # the concurrent good requests, merged or not, are answered
        assert status == 200, answer
        np.testing.assert_allclose(answer["results"][0]["forces"], expected["forces"], atol=1e-8)
    # the server process is the same one, healthy, and a fresh worker answers
    assert server.proc.poll() is None
    assert http(server.url + "/health", token=None)[0] == 200
    status, answer = predict(server, {"structures": [as_json(good)]})
    assert status == 200 and abs(answer["results"][0]["energy"] - expected["energy"]) < 1e-8
    # and it crashes (and recovers) again, every time
    assert predict(server, crashing)[0] == 500
    assert predict(server, {"structures": [h2()]})[0] == 200
    metrics = http(server.url + "/metrics", token=None)[1]
    assert 'type="worker_crashed"' in metrics


@pytest.mark.parametrize("body, needle", [
    ({"structures": [{"numbers": [True, True, True], "positions": [[0, 0, 0], [0.7, 0, 0], [0, 0.7, 0]]}]},
     "structures[0].numbers[0]: Input should be a valid integer"),
    ({"structures": [{"numbers": [10**30, 1], "positions": [[0, 0, 0], [0.7, 0, 0]]}]},
     "structures[0].numbers[0]: Input should be less than or equal to"),
    ({"structures": [{"numbers": [1, 1], "positions": [[0, 0, 0], [True, 0, 0]]}]},
     "structures[0].positions[1][0]: Input should be a valid number"),
    ({"structures": [{**h2(), "pbc": 1}]}, "structures[0].pbc: Input should be a valid"),
    ({"structures": [{**h2(), "pbc": "true"}]}, "structures[0].pbc: Input should be a valid"),
    ({"structures": [{"numbers": ["1", "1"], "positions": [[0, 0, 0], [0.7, 0, 0]]}]},
     "structures[0].numbers[0]: Input should be a valid integer"),
    ({"structures": [{"numbers": [1.0, 1.0], "positions": [[0, 0, 0], [0.7, 0, 0]]}]},
     "structures[0].numbers[0]: Input should be a valid integer"),
])
def test_json_types_are_strict(server, body, needle):
    status, answer = predict(server, body)
    assert status == 422 and answer["error"]["type"] == "invalid_request", answer
    assert needle in answer["error"]["message"], answer["error"]["message"]


def test_out_of_range_numbers_are_element_errors(server):
    status, answer = predict(server, {"structures": [{"numbers": [1, 2**31], "positions": [[0, 0, 0], [0.7, 0, 0]]}]})
    assert status == 422 and "invalid atomic numbers [2147483648]" in answer["error"]["message"]
    # integral floats are still accepted where a number is expected (positions)
    assert predict(server, {"structures": [{"numbers": [1, 1], "positions": [[0, 0, 0], [1, 0, 0]]}]})[0] == 200


def test_edge_limits_give_413_with_estimate_and_limit(server):
    tiny_cell = {"numbers": [29], "positions": [[0, 0, 0]], "cell": [0.01, 0.01, 0.01], "pbc": True}
    status, answer = predict(server, {"structures": [tiny_cell]})
    assert status == 413 and answer["error"]["type"] == "too_large"
    assert "structure 0 (1 atoms) makes about 523,598,776 edges" in answer["error"]["message"] or \
        "structure 0 (1 atoms) makes about 523,598,775 edges" in answer["error"]["message"]
    assert f"at most {MAX_EDGES_PER_STRUCTURE:,} edges per structure" in answer["error"]["message"]
    cu = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)  # 32 atoms, ~1,400 edges with a 5 A cutoff
    status, answer = predict(server, {"structures": [as_json(cu)]})
    assert status == 200
    status, answer = predict(server, {"structures": [as_json(cu)] * 3})
    assert status == 413 and f"at most {MAX_EDGES_PER_REQUEST:,} edges per request" in answer["error"]["message"]
    limits = http(server.url + "/v1/models", token=None)[1]["models"][0]["limits"]
    assert limits["max_edges_per_structure"] == MAX_EDGES_PER_STRUCTURE
    assert limits["max_edges_per_request"] == MAX_EDGES_PER_REQUEST
    assert limits["memory_budget_bytes"] > 0


# ------------------------------------------------------------------------------------ fuzzing
def _json_values(depth: int = 2) -> st.SearchStrategy:
    """Any JSON value, with the awkward ones over-represented (huge ints, NaN/inf, deep nesting)."""
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.integers(min_value=2**53, max_value=10**40),
        st.floats(allow_nan=True, allow_infinity=True), st.floats(-1e12, 1e12), st.text(max_size=8),
    )
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                        max_leaves=12)


def _typed(schema: dict[str, Any], components: dict[str, Any]) -> st.SearchStrategy:
    """Values of a JSON-schema node (followed through $ref, anyOf and arrays), often mistyped."""
    if "$ref" in schema:
        return _typed(components[schema["$ref"].rsplit("/", 1)[-1]], components)
    if "anyOf" in schema:
        return st.one_of(*[_typed(s, components) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "array":
        item = _typed(schema.get("items", {}), components)
        return st.lists(item, max_size=5)
    if kind == "integer":
        return st.one_of(st.integers(0, 120), st.integers(), st.sampled_from([1, 6, 8, 29, 79]))
    if kind == "number":
        return st.one_of(st.floats(-8, 8), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10))
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        enum = schema.get("enum")
        return st.sampled_from(enum) if enum else st.text(max_size=30)
    if kind == "null":
        return st.none()
    if kind == "object":
        props = schema.get("properties", {})
        return st.fixed_dictionaries({}, optional={name: _typed(s, components) for name, s in props.items()})
    return _json_values()


@st.composite
def _plausible(draw, schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """A consistent request (equal lengths, supported elements, spread-out atoms) with sometimes
    one field of one structure replaced by a schema-typed or arbitrary value."""
    structures = []
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 4))
        numbers = draw(st.lists(st.sampled_from([1, 6, 8, 29, 78]), min_size=n, max_size=n))
        positions = draw(st.lists(st.lists(st.floats(-6, 6), min_size=3, max_size=3), min_size=n, max_size=n))
        structure: dict[str, Any] = {"numbers": numbers, "positions": positions}
        if draw(st.booleans()):
            structure["cell"] = draw(st.sampled_from([[12.0, 12.0, 12.0], [[12.0, 0, 0], [0, 12.0, 0], [0, 0, 12.0]]]))
            structure["pbc"] = draw(st.sampled_from([True, False, [True, True, False]]))
        structures.append(structure)
    body: dict[str, Any] = {"structures": structures}
    if draw(st.booleans()):
        body["properties"] = draw(st.lists(st.sampled_from(["energy", "forces", "energies", "stress"]), max_size=3))
    if draw(st.booleans()):  # mutate one field
        fields = components["StructureIn"]["properties"]
        name = draw(st.sampled_from(sorted(fields)))
        value = draw(st.one_of(_typed(fields[name], components), _json_values()))
        draw(st.sampled_from(structures))[name] = value
    return body


@pytest.fixture(scope="module")
def request_schema(server) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = http(server.url + "/openapi.json", token=None)[1]
    components = spec["components"]["schemas"]
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return body, components


@pytest.mark.slow
def test_fuzzed_requests_get_no_5xx_and_do_not_crash_the_server(server, request_schema):
    """Bodies built from the OpenAPI schema (well- and mistyped), plus arbitrary JSON: every answer
    is 200 or a 4xx with an error message; the server process survives it all."""
    schema, components = request_schema
    typed = _typed(schema, components)
    bodies = st.one_of(_plausible(schema, components), _plausible(schema, components), typed, typed, _json_values())
    statuses: list[int] = []

    @settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")), deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=bodies)
    def fuzz(body: Any) -> None:
        text = json.dumps(body, allow_nan=True)
        status, answer = predict(server, text)
        statuses.append(status)
        assert status < 500, (status, answer, text[:500])
        if status != 200:
            assert isinstance(answer, dict) and answer["error"]["message"], answer
        else:
            assert all(math.isfinite(r["energy"]) for r in answer["results"])

    fuzz()
    assert server.proc.poll() is None
    assert http(server.url + "/health", token=None)[0] == 200
    assert 200 in statuses and 422 in statuses  # the fuzz reached the model and the validators


# ------------------------------------------------------------------------------------ fuzzing extxyz
_SYMBOLS = ["H", "O", "Cu", "C", "Og", "Xx", ""]
#: valid inputs among the fuzzed ones, so that the fuzz also reaches the model
_GOOD_EXTXYZ = [
    "3\nProperties=species:S:1:pos:R:3\nO 0 0 0.12\nH 0 0.76 -0.48\nH 0 -0.76 -0.48\n",
    '1\nLattice="2.5 0 0 0 2.5 0 0 0 2.5" Properties=species:S:1:pos:R:3 pbc="T T T"\nCu 0 0 0\n',
    "2\nProperties=species:S:1:pos:R:3\nH 0 0 0\nH 0.74 0 0\n",
]


@st.composite
def _extxyz_texts(draw) -> str:
    """extxyz-like text: frames whose declared count is true, a small lie, or huge (up to 10^14),
    with well-formed or junk comment and atom lines, sometimes cut off or with trailing garbage."""
    frames = []
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(0, 6))
        declared = draw(st.one_of(st.just(n), st.integers(-3, 12), st.integers(10**6, 10**14),
                                  st.sampled_from(["x", "", " 2 ", "1e3", "2.0", "9" * 50])))
        comment = draw(st.one_of(
            st.just('Lattice="12 0 0 0 12 0 0 0 12" Properties=species:S:1:pos:R:3 pbc="T T T"'),
            st.just("Properties=species:S:1:pos:R:3"), st.text(max_size=40)))
        atoms = []
        for _ in range(n):
            symbol = draw(st.sampled_from(_SYMBOLS))
            coords = draw(st.lists(st.one_of(st.floats(-6, 6), st.floats(allow_nan=True, allow_infinity=True),
                                             st.text(max_size=4)), min_size=0, max_size=4))
            atoms.append(" ".join([symbol, *map(str, coords)]))
        frames.append("\n".join([str(declared), comment, *atoms]))
    text = "\n".join(frames) + draw(st.sampled_from(["\n", "", "\n\n", "\njunk\n"]))
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]
    return text


@pytest.mark.slow
@pytest.mark.parametrize("how", ["body", "field"])
def test_fuzzed_extxyz_gets_no_5xx_in_bounded_time_and_health_answers(server, how):
    """extxyz bodies and the JSON ``extxyz`` field, fuzzed (lying counts up to 10^14 included):
    every answer is 200 or a 4xx naming the problem within a few seconds, and /health answers
    right after each."""
    import time

    worst: list[float] = []
    statuses: list[int] = []

    @settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")), deadline=None,
              suppress_health_check=list(HealthCheck), database=None)
    @given(text=st.one_of(_extxyz_texts(), st.sampled_from(_GOOD_EXTXYZ)))
    def fuzz(text: str) -> None:
        start = time.perf_counter()
        if how == "body":
            status, answer, _ = http(server.url + "/v1/predict?properties=energy", text.encode(), token=None,
                                     content_type="chemical/x-extxyz")
        else:
            status, answer = predict(server, {"extxyz": text, "properties": ["energy"]})
        elapsed = time.perf_counter() - start
        health_start = time.perf_counter()
        assert http(server.url + "/health", token=None)[0] == 200
        worst.append(max(elapsed, time.perf_counter() - health_start))
        statuses.append(status)
        assert status < 500, (status, answer, text[:300])
        assert status == 200 or answer["error"]["message"], answer
        assert elapsed < 10, (elapsed, text[:300])

    fuzz()
    assert server.proc.poll() is None
    assert max(worst) < 10
    assert 200 in statuses and 413 in statuses and {400, 422} & set(statuses), sorted(set(statuses))
