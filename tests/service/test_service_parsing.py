"""The request reader on its own: the extxyz prescan (work bounded by the lines, not by the declared
counts) and the parser processes' time budget (a parse that runs past it is killed, answered 413,
and the next request is read by a fresh parser)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from equiformer_calc.service.packing import pack_structures, unpack_structures
from equiformer_calc.service.parsing import ParserPool, parse_body, prescan_extxyz
from equiformer_calc.service.schema import ApiError, Limits

LIMITS = Limits(max_atoms_per_structure=1000, max_atoms_per_request=1500, max_edges_per_structure=10**9,
                max_edges_per_request=10**9, memory_budget_bytes=None, memory_mode="fast", max_body_bytes=1 << 30,
                request_timeout_s=60.0)
HEAD = "Properties=species:S:1:pos:R:3"


def frames(*counts: int) -> str:
    return "".join(f"{n}\n{HEAD}\n" + "".join(f"H {k} 0 0\n" for k in range(n)) for n in counts)


def test_prescan_counts_frames_and_refuses_lies_before_reading():
    assert prescan_extxyz(frames(2, 3, 1), LIMITS) == [2, 3, 1]
    assert prescan_extxyz(frames(2) + "\n\ntrailing text is not read\n", LIMITS) == [2]
    cases = {
        f"{10**14}\n{HEAD}\nH 0 0 0\n": (413, "frame 0 declares 100000000000000 atoms; this server accepts at most 1000"),
        frames(2) + f"999\n{HEAD}\nH 0 0 0\n": (422, "frame 1 declares 999 atoms but only 1 line(s) follow its header"),
        frames(900, 700): (413, "extxyz frames 0-1 declare 1600 atoms; this server accepts at most 1500 atoms per request"),
    }
    for text, (status, needle) in cases.items():
        start = time.perf_counter()
        with pytest.raises(ApiError) as info:
            prescan_extxyz(text, LIMITS)
        assert time.perf_counter() - start < 1.0
        assert info.value.status == status and needle in info.value.message, info.value.message


def test_parse_body_packs_what_it_read_and_keeps_the_first_array_error():
    body = b'{"structures": [{"numbers": [1, 8], "positions": [[0, 0, 0], [0.97, 0, 0]], "cell": [5, 6, 7], ' \
           b'"pbc": true}, {"numbers": [1], "positions": [[0, 0, 0]], "cell": [[1, 2]]}]}'
    packed, properties, failed = parse_body("application/json", body, [], LIMITS)
    assert properties == ["energy", "forces"] and len(packed) == 1
    assert failed is not None and failed[0] == 1 and "cell must have shape (3, 3)" in failed[1]
    (s,) = unpack_structures(packed)
    np.testing.assert_array_equal(s.cell, np.diag([5.0, 6.0, 7.0]))
    assert s.pbc.tolist() == [True] * 3 and s.numbers.tolist() == [1, 8]
    again = unpack_structures(pack_structures([s, s]))
    assert all(np.array_equal(a.positions, s.positions) for a in again)


def test_a_parse_over_the_budget_is_killed_and_the_next_one_is_served():
    pool = ParserPool(size=1, timeout_s=60.0, inline_bytes=0)
    pool.start()
    try:
        big = frames(900).encode()
        limits = LIMITS.model_copy(update={"max_atoms_per_structure": 10**6, "max_atoms_per_request": 10**6})
        huge = (frames(*[500] * 400)).encode()  # 200,000 atoms, 2 MB: ~1 s for ASE, far over 10 ms
        pool.parse("chemical/x-extxyz", big, [], limits)  # the parser is up and answers in time
        pool.timeout_s = 0.01  # a budget no machine reads 2 MB of extxyz in (0.5 s was passed on a quiet one)
        start = time.perf_counter()
        with pytest.raises(ApiError) as info:
            pool.parse("chemical/x-extxyz", huge, [], limits)
        assert time.perf_counter() - start < 5
        assert info.value.status == 413 and "parse budget of 0.01 s" in info.value.message
        assert pool.killed == 1
        pool.timeout_s = 60.0
        packed, _, failed = pool.parse("chemical/x-extxyz", big, [], limits)
        assert len(packed) == 1 and failed is None
    finally:
        pool.stop()


def test_the_predictor_wrappers_share_one_protocol():
    from equiformer_calc.integrations.d3 import D3, DispersionPredictor
    from equiformer_calc.model import Equiformer
    from equiformer_calc.predictor import Predictor
    from equiformer_calc.protocols import PredictorLike
    from equiformer_calc.service.worker import IsolatedPredictor

    local = Predictor(Equiformer.from_preset("tiny", elements=["H", "O"]))
    isolated = IsolatedPredictor(DispersionPredictor(local, D3("d3bj")))  # not started: no process
    assert isolated.local is local and isolated.settings.dispersion == "d3bj"
    for predictor in (local, isolated, DispersionPredictor(local, D3("d3bj"))):
        assert isinstance(predictor, PredictorLike), type(predictor)
        assert predictor.elements == ["H", "O"] and predictor.cutoff == local.cutoff
    assert isolated.worker_pid is None
