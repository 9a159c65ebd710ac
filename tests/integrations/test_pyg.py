"""PyTorch Geometric: AtomicGraph <-> Data/Batch, the model on a PyG Batch, training samples through
torch_geometric.loader.DataLoader, one training step from a PyG loader equal to the core path's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("torch_geometric", reason="the [pyg] extra (torch-geometric) is not installed")
from torch_geometric.data import Batch as PygBatch  # noqa: E402
from torch_geometric.data import Data  # noqa: E402
from torch_geometric.loader import DataLoader  # noqa: E402

from equiformer_calc.integrations.pyg import from_pyg, to_pyg  # noqa: E402
from equiformer_calc.graph import AtomicGraph, batch_graphs, build_graph, structure_from_atoms  # noqa: E402
from equiformer_calc.predictor import compute  # noqa: E402
from equiformer_calc.train.data import SampleDataset, batch_from_pyg, collate, samples_from_atoms  # noqa: E402
from equiformer_calc.train.trainer import TrainConfig, _losses  # noqa: E402

from ..helpers import SYSTEMS, make_model  # noqa: E402


def graphs(cutoff: float) -> list[AtomicGraph]:
    return [build_graph(structure_from_atoms(SYSTEMS[k]()), cutoff) for k in sorted(SYSTEMS)]


def assert_same_graph(a: AtomicGraph, b: AtomicGraph) -> None:
    for name in AtomicGraph.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:  # optional fields (tags)
            assert x is None and y is None, name
            continue
        assert x.dtype == y.dtype and torch.equal(x, y), name


def test_round_trip_of_one_graph_and_a_batch():
    model = make_model(0)
    gs = graphs(model.cutoff)
    one = to_pyg(gs[0])
    assert isinstance(one, Data) and one.cell.shape == (1, 3, 3) and torch.equal(one.z, one.atomic_numbers)
    assert_same_graph(from_pyg(one), gs[0])
    batched = batch_graphs(gs)
    pyg = to_pyg(batched)
    assert isinstance(pyg, PygBatch) and pyg.num_graphs == 3
    assert_same_graph(from_pyg(pyg), batched)
    # PyG's own collation of the one-structure Data objects gives the same graph
    assert_same_graph(from_pyg(PygBatch.from_data_list([to_pyg(g) for g in gs])), batched)


def test_model_on_a_pyg_batch_gives_the_same_energies_and_forces():
    model = make_model(0).double()
    batched = batch_graphs(graphs(model.cutoff))
    pyg = to_pyg(batched)
    direct = model(batched.numbers, batched.positions, batched.edge_index, batched.shifts, batched.cell, batched.batch,
                   batched.num_graphs)
    via_pyg = model(pyg)
    assert torch.equal(direct["energy"], via_pyg["energy"]) and torch.equal(direct["energies"], via_pyg["energies"])
    f_direct = compute(model, batched)["forces"]
    f_pyg = compute(model, from_pyg(pyg))["forces"]
    assert torch.equal(f_direct, f_pyg) and float(f_direct.abs().max()) > 1e-3


def test_from_pyg_names_missing_fields_and_takes_non_periodic_data():
    with pytest.raises(ValueError, match="lacks z/atomic_numbers"):
        from_pyg(Data(pos=torch.zeros(2, 3), edge_index=torch.zeros(2, 0, dtype=torch.long)))
    with pytest.raises(TypeError, match="or one PyG Data/Batch"):
        make_model(0)(torch.tensor([1]))
    # a plain molecular Data (no cell, pbc or offsets), as other PyG datasets have it
    model = make_model(0).double()
    g = graphs(model.cutoff)[sorted(SYSTEMS).index("molecule")]
    plain = Data(pos=g.positions, z=g.numbers, edge_index=g.edge_index)
    assert torch.equal(model(plain)["energy"], compute(model, g, forces=False)["energy"])


def labelled_samples(cutoff: float):
    from ase.calculators.emt import EMT

    frames = []
    for k in ("bulk", "slab", "molecule", "bulk"):
        atoms = SYSTEMS[k]()
        atoms.rattle(0.02, seed=len(frames))
        atoms.calc = EMT()
        atoms.get_forces()
        if atoms.pbc.all():
            atoms.get_stress()
        frames.append(atoms)
    return samples_from_atoms(frames, cutoff)


def test_training_step_from_a_pyg_dataloader_equals_the_core_path():
    torch.manual_seed(0)
    samples = labelled_samples(5.0)
    loader = DataLoader(SampleDataset(samples), batch_size=2, shuffle=False)
    cfg = TrainConfig(train="-", val="-")
    models = [make_model(3), make_model(3)]
    optims = [torch.optim.SGD(m.parameters(), lr=1e-2) for m in models]
    for k, pyg in enumerate(loader):
        core = collate(samples[2 * k : 2 * k + 2])
        via = batch_from_pyg(pyg)
        assert_same_graph(via.graph, core.graph)
        for name in ("energy", "forces", "free", "stress", "has_stress", "num_atoms"):
            assert torch.equal(getattr(via, name), getattr(core, name)), name
        losses = []
        for model, opt, batch in zip(models, optims, (core, via)):
            opt.zero_grad()
            loss, _ = _losses(model, batch, cfg, create_graph=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        assert losses[0] == losses[1] and np.isfinite(losses[0])
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(models[0].parameters(), make_model(3).parameters()))
