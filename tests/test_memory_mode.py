"""Low-memory mode (chunked per-edge work under activation checkpointing) and the memory budget.

Low mode must give the default mode's numbers to round-off (float64 to ~1e-10, float32 to
float32 round-off), for every attention variant, unsorted edges, batches, stress and second
derivatives (training), while keeping far fewer tensors for the backward pass. The Predictor
picks the mode from its memory model and refuses calls that cannot fit with a clear error.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest
import torch
from ase.build import bulk

import equiformer_calc.memory as memory_mod
import equiformer_calc.predictor as predictor_mod
from equiformer_calc.calculators.local import EquiformerCalculator
from equiformer_calc.graph import batch_graphs, build_graph, structure_from_atoms
from equiformer_calc.nn import sort_by_destination, split_edges
from equiformer_calc.predictor import MemoryBudgetError, Predictor, available_memory, compute

from .helpers import SYSTEMS, bulk_cell, make_model, slab_with_adsorbate

#: devices the exactness tests run on: the CPU always, a GPU where there is one
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 23 edges, so every test structure is cut into many chunks."""
    monkeypatch.setattr(memory_mod, "LOW_MEMORY_EDGE_CHUNK", 23)


def frozen(model):
    """The model as the Predictor runs it: parameters without gradients (the lean inference path
    of low-memory mode; trainable parameters take torch.utils.checkpoint, tested separately)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _graph(atoms, model, dtype, device="cpu"):
    return build_graph(structure_from_atoms(atoms), model.cutoff, dtype=dtype).to(device, dtype)


def _both(model, graph, stress: bool):
    fast = compute(model, graph, forces=True, stress=stress, memory="fast")
    low = compute(model, graph, forces=True, stress=stress, memory="low")
    return fast, low


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_low_memory_equals_fast_float64(small_chunks, name, device):
    model = frozen(make_model(0)).to(device=device, dtype=torch.float64)
    atoms = SYSTEMS[name]()
    graph = _graph(atoms, model, torch.float64, device)
    assert graph.num_edges > 3 * 23  # several chunks
    stress = bool(atoms.pbc.all())
    fast, low = _both(model, graph, stress)
    assert abs(float(fast["energy"][0].detach() - low["energy"][0].detach())) < 1e-10
    torch.testing.assert_close(low["energies"], fast["energies"], atol=1e-11, rtol=0)
    assert float(fast["forces"].abs().max()) > 1e-3  # not trivially zero
    torch.testing.assert_close(low["forces"], fast["forces"], atol=1e-10, rtol=0)
    if stress:
        torch.testing.assert_close(low["stress"], fast["stress"], atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_low_memory_equals_fast_float32(small_chunks, name):
    model = frozen(make_model(0)).float()
    atoms = SYSTEMS[name]()
    graph = _graph(atoms, model, torch.float32)
    fast, low = _both(model, graph, bool(atoms.pbc.all()))
    scale = float(fast["forces"].abs().max())
    # float32 round-off: only the order of the sums differs
    e_fast, e_low = float(fast["energy"][0].detach()), float(low["energy"][0].detach())
    assert abs(e_fast - e_low) < 1e-5 * max(1.0, abs(e_fast))
    torch.testing.assert_close(low["forces"], fast["forces"], atol=2e-6 * max(scale, 1.0), rtol=0)


@pytest.mark.parametrize(
    "variant",
    [dict(attention="dot"), dict(softmax="plain"), dict(nonlinear_message=False), dict(norm="block"),
     dict(num_tags=3), dict(edge_embedding_bias=True)],
    ids=["dot", "plain-softmax", "linear-message", "block-norm", "tags", "embedding-bias"],
)
def test_low_memory_exact_for_every_variant(small_chunks, variant):
    model = frozen(make_model(2, **variant)).double()
    atoms = slab_with_adsorbate()
    graph = _graph(atoms, model, torch.float64)
    if variant.get("num_tags"):
        graph.tags = torch.tensor([k % 3 for k in range(len(atoms))])
    fast, low = _both(model, graph, stress=False)
    torch.testing.assert_close(low["forces"], fast["forces"], atol=1e-10, rtol=0)
    assert abs(float(fast["energy"][0].detach() - low["energy"][0].detach())) < 1e-10


def test_low_memory_with_unsorted_edges_and_a_batch(small_chunks):
    model = frozen(make_model(0)).double()
    graphs = [_graph(SYSTEMS[n](), model, torch.float64) for n in sorted(SYSTEMS)]
    batch = batch_graphs(graphs)
    fast = compute(model, batch, forces=True, memory="fast")
    perm = torch.randperm(batch.num_edges, generator=torch.Generator().manual_seed(0))
    batch.edge_index = batch.edge_index[:, perm]
    batch.shifts = batch.shifts[perm]
    low = compute(model, batch, forces=True, memory="low")
    torch.testing.assert_close(low["energy"], fast["energy"], atol=1e-10, rtol=0)
    torch.testing.assert_close(low["forces"], fast["forces"], atol=1e-10, rtol=0)


def test_low_memory_training_second_derivatives(small_chunks):
    """create_graph works in low mode: the parameter gradient of a force loss equals fast mode's."""
    atoms = bulk_cell()
    grads, forces = {}, {}
    for mode in ("fast", "low"):
        model = make_model(0, alpha_drop=0.3).double().train()  # dropout: recomputed chunks must draw the same masks
        graph = _graph(atoms, model, torch.float64)
        torch.manual_seed(5)
        out = compute(model, graph, forces=True, stress=True, create_graph=True, memory=mode)
        forces[mode] = out["forces"].detach()
        loss = (out["forces"] ** 2).sum() + out["energy"].sum() ** 2 + (out["stress"] ** 2).sum()
        params = [p for p in model.parameters() if p.requires_grad]
        grads[mode] = torch.autograd.grad(loss, params, allow_unused=True)
    torch.testing.assert_close(forces["low"], forces["fast"], atol=1e-10, rtol=0)
    compared = 0
    for g_fast, g_low in zip(grads["fast"], grads["low"]):
        if g_fast is None:
            assert g_low is None
            continue
        torch.testing.assert_close(g_low, g_fast, atol=1e-9, rtol=1e-9)
        compared += 1
    assert compared > 10


def test_low_memory_refuses_second_derivatives_of_a_frozen_model(small_chunks):
    model = frozen(make_model(0)).double()
    graph = _graph(bulk_cell(), model, torch.float64)
    with pytest.raises(RuntimeError, match="memory='fast'"):
        compute(model, graph, forces=True, create_graph=True, memory="low")
    compute(model, graph, forces=True, create_graph=True, memory="fast")  # fine without low memory


def test_low_memory_keeps_far_fewer_tensors_for_the_backward_pass():
    """What the forward pass saves for autograd: all per-edge tensors of all blocks (fast) versus
    the shared edge geometry and node features (low), on a 108-atom bulk with the 'small' size."""
    from equiformer_calc.model import Equiformer

    torch.manual_seed(0)
    model = frozen(Equiformer.from_preset("small", elements=["Cu"])).float()
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat((3, 3, 3))
    graph = _graph(atoms, model, torch.float32)
    saved = {}
    for mode, chunk in (("fast", None), ("low", 1024)):
        storages: dict[int, int] = {}

        def pack(t, storages=storages):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            pos = graph.positions.detach().requires_grad_(True)
            model(graph.numbers, pos, graph.edge_index, graph.shifts, graph.cell, graph.batch, 1, edge_chunk=chunk)
        saved[mode] = sum(storages.values())
    per_edge = {k: v / graph.num_edges for k, v in saved.items()}
    assert per_edge["fast"] > 10_000  # tens of kB per edge: every block's per-edge tensors
    assert per_edge["low"] < 0.05 * per_edge["fast"], per_edge


def test_split_edges_keeps_each_atoms_edges_together():
    g = torch.Generator().manual_seed(1)
    n = 50
    dst = torch.sort(torch.randint(0, n, (700,), generator=g)).values
    dst[100:140] = dst[100]  # one atom with 40+ incoming edges, more than a chunk
    dst = torch.sort(dst).values
    edge_index = torch.stack([torch.randint(0, n, (700,), generator=g), dst])
    sh, basis, env = torch.randn(700, 9), torch.randn(700, 8), torch.rand(700)
    chunks = split_edges(sh, basis, env, edge_index, n, max_edges=30)
    assert sum(c.edge_index.shape[1] for c in chunks) == 700
    assert torch.equal(torch.cat([c.edge_index for c in chunks], dim=1), edge_index)
    assert torch.equal(torch.cat([c.sh for c in chunks]), sh)
    seen: set[int] = set()
    for c in chunks:
        atoms = set(c.edge_index[1].tolist())
        assert not atoms & seen, "an atom's incoming edges were split across chunks"
        seen |= atoms
        assert c.edge_index.shape[1] <= 30 or len(atoms) == 1
    assert any(c.edge_index.shape[1] > 30 for c in chunks)  # the big atom got a chunk of its own
    with pytest.raises(ValueError, match="sorted by destination"):
        split_edges(sh, basis, env, edge_index[:, torch.randperm(700, generator=g)], n, max_edges=30)


def test_sort_by_destination_leaves_sorted_edges_alone():
    edge_index = torch.tensor([[1, 0, 2], [0, 1, 1]])
    shifts = torch.zeros(3, 3)
    e, s = sort_by_destination(edge_index, shifts)
    assert e is edge_index and s is shifts
    e, s = sort_by_destination(edge_index[:, [2, 0, 1]], shifts)
    assert e[1].tolist() == [0, 1, 1] and e[0].tolist() == [1, 2, 0]  # stable


# ---------------------------------------------------------------------------------------- predictor
def test_predictor_modes_agree_and_auto_picks_by_budget(small_chunks, monkeypatch):
    structures = [slab_with_adsorbate(), bulk_cell()]
    results = {}
    for mode in ("fast", "low"):
        results[mode] = Predictor(make_model(0), dtype="float64", memory=mode).predict(structures, ("energy", "forces"))
    for a, b in zip(results["fast"], results["low"]):
        assert abs(a["energy"] - b["energy"]) < 1e-10
        np.testing.assert_allclose(b["forces"], a["forces"], atol=1e-10, rtol=0)
    # auto: a budget between the two estimates of a call makes it pick 'low', a large one 'fast'
    p = Predictor(make_model(0), dtype="float64", memory="auto")
    bulk_atoms = structures[1]
    edges = p.graph(p.to_structure(bulk_atoms)).num_edges
    fast_need = p.estimate_bytes(edges, ("energy", "forces"), "fast")
    low_need = p.estimate_bytes(edges, ("energy", "forces"), "low")
    assert low_need < 0.5 * fast_need
    chosen = []
    monkeypatch.setattr(predictor_mod, "compute", lambda *a, memory, **k: chosen.append(memory) or _real_compute(*a, memory=memory, **k))
    p.memory_budget = int((fast_need + low_need) / 2)
    out = p.predict([bulk_atoms])
    p.memory_budget = int(2 * fast_need)
    p.predict([bulk_atoms])
    assert chosen == ["low", "fast"]
    np.testing.assert_allclose(out[0]["forces"], results["fast"][1]["forces"], atol=1e-10, rtol=0)
    # a batch whose structures fit 'fast' one by one but not together is cut into 'fast' calls
    # (cheaper than one 'low' call of the whole batch)
    p.memory_budget = int(1.2 * fast_need)
    chosen.clear()
    out = p.predict([bulk_atoms, bulk_atoms])
    assert chosen == ["fast", "fast"]
    for r in out:
        np.testing.assert_allclose(r["forces"], results["fast"][1]["forces"], atol=1e-10, rtol=0)


_real_compute = compute


def test_over_budget_is_refused_before_the_model_runs(monkeypatch):
    p = Predictor(make_model(0), dtype="float32", memory="auto", memory_budget=10_000)  # 10 kB: nothing fits
    calls = []
    monkeypatch.setattr(predictor_mod, "compute", lambda *a, **k: calls.append(1))
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    with pytest.raises(MemoryBudgetError) as info:
        p.predict([atoms])
    err = info.value
    assert isinstance(err, MemoryError)
    assert calls == []
    assert err.limit == 10_000 and err.estimate > 10_000
    msg = str(err)
    assert "edges" in msg and "GiB" in msg and "memory='low'" in msg
    # the same structure evaluates with a budget it fits in, and 'low' fits where 'fast' does not
    edges = p.graph(p.to_structure(atoms)).num_edges
    p.memory_budget = int(p.estimate_bytes(edges, ("energy", "forces"), "low") * 1.01)
    assert p.memory_mode(edges) == "low"
    p.memory = "fast"
    with pytest.raises(MemoryBudgetError, match="memory='fast' mode"):
        p.memory_mode(edges)


def test_memory_settings_are_validated():
    with pytest.raises(ValueError, match="memory must be one of"):
        Predictor(make_model(0), memory="small")
    with pytest.raises(ValueError, match="memory_budget"):
        Predictor(make_model(0), memory_budget=0)
    with pytest.raises(ValueError, match="memory_budget"):
        Predictor(make_model(0), memory_budget="lots")
    unlimited = Predictor(make_model(0), memory_budget=None)
    assert unlimited.memory_limit() is None and unlimited.memory_mode(10**9) == "fast"
    assert Predictor(make_model(0)).memory_limit() == pytest.approx(0.8 * available_memory(), rel=0.2)
    with pytest.raises(ValueError, match="'fast' or 'low'"):
        compute(make_model(0), _graph(bulk_cell(), make_model(0), torch.float32), memory="auto")


def test_available_memory_is_read_from_the_system():
    avail = available_memory()
    assert avail is not None and avail > 0
    total = int(open("/proc/meminfo").read().split("MemTotal:")[1].split()[0]) * 1024
    assert avail <= total


_HEAP_PROBE = """
import json, os, torch
from equiformer_calc.predictor import available_memory
from equiformer_calc.runtime import configure_runtime, heap_free_bytes, release_memory
configure_runtime()
size = 400 << 20
out = {"free0": heap_free_bytes(), "avail0": available_memory()}
block = torch.ones(size // 4)  # touched: resident, from the heap (below the 1 GiB mmap threshold)
del block
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
out.update(free1=heap_free_bytes(), avail1=available_memory(), rss1=rss())
out.update(released=release_memory(), rss2=rss())
print(json.dumps(out))
"""


def test_memory_the_heap_keeps_after_a_call_stays_available_and_can_be_released():
    import json
    import subprocess
    import sys

    if not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    # a fresh process with the allocator tuning on, whose heap holds no free block of that size yet
    env = {k: v for k, v in os.environ.items() if k != "EQUIFORMER_CALC_NO_MALLOPT"}
    run = subprocess.run([sys.executable, "-c", _HEAP_PROBE], capture_output=True, text=True, env=env, check=True)
    out = json.loads(run.stdout.splitlines()[-1])
    size = 400 << 20
    # freed but kept by the heap (never trimmed): counted as free to us, so not lost to the budget
    assert out["free1"] >= out["free0"] + 0.9 * size, out
    assert out["avail1"] > out["avail0"] - 0.25 * size, out
    # and handed back to the OS on request
    assert out["released"] and out["rss1"] - out["rss2"] > 0.9 * size, out


def test_calculator_memory_option_and_pickle(small_chunks):
    import pickle

    atoms = bulk_cell()
    ref = EquiformerCalculator(model=make_model(0), dtype="float64", memory="fast")
    low = EquiformerCalculator(model=make_model(0), dtype="float64", memory="low")
    assert low.parameters["memory"] == "low"
    atoms.calc = ref
    f_ref, s_ref = atoms.get_forces(), atoms.get_stress()
    atoms.calc = low
    np.testing.assert_allclose(atoms.get_forces(), f_ref, atol=1e-10, rtol=0)
    np.testing.assert_allclose(atoms.get_stress(), s_ref, atol=1e-10, rtol=0)
    clone = pickle.loads(pickle.dumps(low))
    assert clone.predictor.memory == "low"
    clone.set(memory="fast")  # ASE's set() reaches the predictor
    assert clone.predictor.memory == "fast" and clone.parameters["memory"] == "fast"
    with pytest.raises(ValueError, match="memory must be one of"):
        clone.set(memory="tiny")
    assert clone.predictor.memory == "fast"
    with pytest.raises(ValueError, match="memory must be one of"):
        EquiformerCalculator(model=make_model(0), memory="tiny")


@pytest.mark.parametrize("module", ["equiformer_calc.cli.md", "equiformer_calc.cli.relax", "equiformer_calc.cli.serve"])
def test_command_lines_take_a_memory_mode(module):
    import argparse
    import importlib

    parser = argparse.ArgumentParser()
    importlib.import_module(module).add_arguments(parser)
    args = parser.parse_args(["--memory", "low"] + (["x.xyz"] if "serve" not in module else []))
    assert args.memory == "low"
    assert parser.parse_args(["x.xyz"] if "serve" not in module else []).memory == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["--memory", "tiny"] + (["x.xyz"] if "serve" not in module else []))
