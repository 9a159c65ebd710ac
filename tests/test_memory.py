"""The memory model against measurement: a few small cases of the calibration benchmark
(``benchmarks/memory.py --sweep``), each size in a fresh process, and the estimate's bytes per edge
within ``memory.ESTIMATE_BAND`` of the measured slope of the call's peak RSS increase (the peak of
a window opened just before the call). A change of
the network that makes the memory model stale (more per-edge tensors kept for the backward pass,
a lost chunking in low mode) fails here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from equiformer_calc.memory import ESTIMATE_BAND, MemoryBudget, MemoryModel, call_bytes

from .helpers import make_model

ROOT = Path(__file__).resolve().parents[1]


def _benchmark():
    """benchmarks/memory.py as a module (it imports its sibling ``_common``)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_memory", ROOT / "benchmarks" / "memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm and ru_maxrss in KiB")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_estimate_per_edge_is_within_the_band_of_the_measured_peak(tmp_path, dtype):
    """Fast mode, with forces: what the budget charges most for. (Low mode keeps a few hundred bytes
    per edge, below what an RSS measurement resolves once the heap reuses its free blocks.)"""
    case = _benchmark().sweep_case("tiny", dtype, "energy,forces", "fast", (3, 5), workdir=tmp_path)
    small, large = case["runs"]
    assert large["edges"] > 4 * small["edges"]
    assert case["measured_per_edge"] > 0, case
    lo, hi = ESTIMATE_BAND
    assert lo <= case["ratio"] <= hi, (
        f"memory model {case['estimate_per_edge']:.0f} B/edge vs measured {case['measured_per_edge']:.0f} B/edge "
        f"(ratio {case['ratio']:.2f}, band {ESTIMATE_BAND})")


def test_memory_model_follows_the_mode_and_the_network():
    small = make_model(0).config
    big = make_model(0, num_blocks=4, irreps_node="16x0e+8x1e+4x2e").config
    e = 100_000
    assert call_bytes(small, "float32", e, True, "low") < call_bytes(small, "float32", e, True, "fast")
    assert call_bytes(big, "float32", e, True, "fast") > call_bytes(small, "float32", e, True, "fast")
    assert call_bytes(small, "float64", e, True, "fast") > call_bytes(small, "float32", e, True, "fast")
    assert call_bytes(small, "float32", e, False, "fast") < call_bytes(small, "float32", e, True, "fast")


def test_call_edges_inverts_the_memory_model():
    """Batching and the service's edge limits use the inverse of the memory model: the most edges
    whose call fits a limit, in both modes, with and without forces, on both sides of one chunk."""
    p = MemoryBudget(MemoryModel(make_model(0).config, "float32"))
    for props in (("energy",), ("energy", "forces")):
        for mode in ("fast", "low"):
            for limit in (1e3, 1e5, 3e6, 1e8, 1e10):
                edges = p.call_edges(limit, props, mode)
                assert p.estimate_bytes(edges, props, mode) <= limit < p.estimate_bytes(edges + 1, props, mode)
