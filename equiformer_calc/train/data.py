"""Labelled structures for training and evaluation: samples with graphs, and their batches (the
files are read by :mod:`equiformer_calc.data.readers`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from ase.stress import full_3x3_to_voigt_6_stress
import torch
from ase import Atoms

from ..data.readers import LabelKeys, read_frames
from ..graph import AtomicGraph, Structure, batch_graphs, build_graph, structure_from_atoms
from ..integrations.pyg import from_pyg, to_pyg
from ..surfaces import held_mask

__all__ = ["Sample", "SampleDataset", "read_samples", "samples_from_atoms", "collate", "batch_from_pyg", "Batch"]

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """One labelled structure with its radius graph (float64, CPU).

    ``free`` marks atoms not held by FixAtoms (force metrics are reported over free atoms, as OC20
    does); forces are the raw labels of every atom. ``stress`` is Voigt (6,) or None.
    """

    graph: AtomicGraph
    energy: float
    forces: np.ndarray
    free: np.ndarray
    stress: np.ndarray | None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_atoms(self) -> int:
        return self.graph.num_atoms

    def to_pyg(self) -> Any:
        """This sample as a PyTorch Geometric ``Data``: the graph's fields (see
        :func:`~equiformer_calc.integrations.pyg.to_pyg`) plus the labels ``energy`` (1,),
        ``forces`` (N, 3), ``free`` (N,), ``stress`` (1, 6) and ``has_stress`` (1,)."""
        data = to_pyg(self.graph)
        data.energy = torch.tensor([self.energy], dtype=torch.float64)
        data.forces = torch.from_numpy(np.asarray(self.forces, dtype=np.float64))
        data.free = torch.from_numpy(np.asarray(self.free, dtype=bool))
        data.stress = torch.from_numpy(np.zeros((1, 6)) if self.stress is None else np.asarray(self.stress, dtype=np.float64).reshape(1, 6))
        data.has_stress = torch.tensor([self.stress is not None])
        return data


class SampleDataset(torch.utils.data.Dataset):
    """Samples as PyG ``Data`` objects, for ``torch_geometric.loader.DataLoader``; turn each of its
    batches into a training :class:`Batch` with :func:`batch_from_pyg`."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Any:
        return self.samples[index].to_pyg()


def samples_from_atoms(frames: Iterable[Atoms], cutoff: float, progress: bool = False) -> list[Sample]:
    """Labelled ``Atoms`` (energy and forces from their calculator) -> samples with graphs."""
    from ..io import progress as tqdm  # live bar on a terminal, plain lines in a log

    samples = []
    frames = list(frames)
    for atoms in tqdm(frames, desc="graphs", disable=not progress, leave=False):
        calc = atoms.calc
        if calc is None:
            raise ValueError("a training frame has no energy/forces labels")
        energy = float(calc.results.get("energy", calc.results.get("free_energy")))
        forces = np.asarray(calc.results["forces"], dtype=np.float64)
        stress = calc.results.get("stress")
        if stress is not None:
            stress = np.asarray(stress, dtype=np.float64).reshape(-1)
            if stress.shape == (9,):
                stress = full_3x3_to_voigt_6_stress(stress.reshape(3, 3))
        if not atoms.pbc.all():
            stress = None
        structure = structure_from_atoms(atoms)
        samples.append(
            Sample(
                graph=build_graph(structure, cutoff, dtype=torch.float64),
                energy=energy,
                forces=forces,
                free=~held_mask(atoms),
                stress=stress,
                info={k: v for k, v in atoms.info.items() if isinstance(v, (str, int, float, bool))},
            )
        )
    return samples


def read_samples(
    path: str | Path,
    cutoff: float,
    index: str = ":",
    progress: bool = False,
    keys: LabelKeys | None = None,
    format: str | None = None,
) -> list[Sample]:
    """Read labelled frames into samples: extxyz (labels under ``keys``), ASE databases (``.db``,
    PostgreSQL / MySQL URLs), fairchem ``.aselmdb`` files or folders, and anything else
    ``ase.io`` reads (all frames); see :func:`equiformer_calc.data.readers.read_frames`."""
    frames = read_frames(path, keys=keys, index=index, format=format)
    return samples_from_atoms(frames, cutoff, progress=progress)


@dataclass
class Batch:
    """Samples merged into one graph plus their label tensors."""

    graph: AtomicGraph
    energy: torch.Tensor  # (B,) float64
    forces: torch.Tensor  # (N, 3)
    free: torch.Tensor  # (N,) bool
    stress: torch.Tensor  # (B, 6), zeros where absent
    has_stress: torch.Tensor  # (B,) bool
    num_atoms: torch.Tensor  # (B,) float64


def batch_from_pyg(data: Any, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> "Batch":
    """A PyG ``Batch`` of :meth:`Sample.to_pyg` objects -> the :class:`Batch` the loss takes (the
    same tensors :func:`collate` builds from the samples)."""
    graph = from_pyg(data).to(device, dtype)
    return Batch(
        graph=graph,
        energy=data.energy.to(device, torch.float64),
        forces=data.forces.to(device, dtype),
        free=data.free.to(device),
        stress=data.stress.to(device, dtype),
        has_stress=data.has_stress.to(device),
        num_atoms=(graph.ptr[1:] - graph.ptr[:-1]).to(device, torch.float64),
    )


def collate(samples: Sequence[Sample], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Batch:
    """Batch samples for the model (on ``device`` / ``dtype``)."""
    graph = batch_graphs([s.graph for s in samples]).to(device, dtype)
    stress = np.zeros((len(samples), 6))
    has_stress = np.zeros(len(samples), dtype=bool)
    for k, s in enumerate(samples):
        if s.stress is not None:
            stress[k] = s.stress
            has_stress[k] = True
    return Batch(
        graph=graph,
        energy=torch.tensor([s.energy for s in samples], dtype=torch.float64, device=device),
        forces=torch.from_numpy(np.concatenate([s.forces for s in samples])).to(device, dtype),
        free=torch.from_numpy(np.concatenate([s.free for s in samples])).to(device),
        stress=torch.from_numpy(stress).to(device, dtype),
        has_stress=torch.from_numpy(has_stress).to(device),
        num_atoms=torch.tensor([s.num_atoms for s in samples], dtype=torch.float64, device=device),
    )
