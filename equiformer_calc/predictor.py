"""The one place that runs the model: graphs -> forward -> autograd forces and stress.

Everything that evaluates energies (the ASE calculator, batched relaxations, the HTTP service, the
trainer's loss) calls :func:`compute` (differentiable, torch in / torch out) or
:class:`Predictor` (structures in, numpy results out, batched by an atom budget).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .graph import (
    AtomicGraph,
    NeighborListCache,
    Structure,
    StructureError,
    batch_graphs,
    build_graph,
    structure_from_atoms,
)
from .model import Equiformer, UnknownElementError
from .runtime import configure_runtime

__all__ = ["compute", "Predictor", "ALL_PROPERTIES", "NotAPotentialError", "model_task", "not_a_potential_message", "resolve_dtype", "voigt"]

log = logging.getLogger(__name__)

#: properties a prediction can return (ASE names and units: eV, eV/A, eV/A^3)
ALL_PROPERTIES = ("energy", "free_energy", "energies", "forces", "stress")


class NotAPotentialError(ValueError):
    """Forces or stress were asked of a model whose energy is not a potential energy surface."""


def model_task(model: Equiformer) -> str:
    """What the model's energy is: ``"potential"`` (the default), ``"is2re-direct"`` (OC20's
    relaxed adsorption energy predicted from an initial structure) or ``"property"`` (a
    molecular property); from the checkpoint metadata's ``task``."""
    return str((getattr(model, "metadata", None) or {}).get("task", "potential"))


def not_a_potential_message(task: str, prop: str) -> str:
    """Why ``prop`` (forces / stress) is refused for a model of ``task``."""
    if task == "is2re-direct":
        return (
            f"{prop} are not available: this is a direct IS2RE model. It predicts the relaxed adsorption energy "
            "of the structure an initial (unrelaxed) geometry would relax to, not the energy of the geometry "
            "itself, so its derivative is not a force. Use its energy for screening (screen --direct), and a "
            "potential for relaxations and MD."
        )
    return (
        f"{prop} are not available: this model predicts a molecular property (task {task!r}), not a potential "
        "energy; convert it with task='potential' if its target is an energy"
    )


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'float32' / 'float64' (or a torch dtype) -> torch dtype; anything else is an error."""
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float32, torch.float64):
            return dtype
    elif dtype in ("float32", "float64"):
        return getattr(torch, dtype)
    raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")


def voigt(stress: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) -> (B, 6) in ASE's Voigt order xx, yy, zz, yz, xz, xy."""
    return stress[:, [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]


def compute(
    model: Equiformer,
    graph: AtomicGraph,
    forces: bool = True,
    stress: bool = False,
    create_graph: bool = False,
) -> dict[str, torch.Tensor]:
    """Energies, and forces = -dE/dpos and stress = (1/V) dE/d(strain) from one autograd pass.

    ``graph`` must already be on the model's device and dtype. ``stress`` requires every graph of
    the batch to be periodic in 3D. With ``create_graph`` the results can be differentiated
    again (training on forces). Returns ``energy`` (B,) float64, ``energies`` (N,) float64,
    ``forces`` (N, 3) and ``stress`` (B, 3, 3) in the graph's dtype.
    """
    positions = graph.positions
    cell = graph.cell
    inputs: list[torch.Tensor] = []
    if forces or stress:
        positions = positions.detach().requires_grad_(True)
        inputs.append(positions)
    if stress:
        if not bool(graph.pbc.all()):
            raise StructureError("stress is only defined for systems periodic in all three directions")
        strain = torch.zeros_like(cell, requires_grad=True)
        sym = 0.5 * (strain + strain.transpose(1, 2))
        positions = positions + torch.einsum("ni,nij->nj", positions, sym[graph.batch])
        cell = cell + torch.bmm(cell, sym)
        inputs.append(strain)
    out = model(graph.numbers, positions, graph.edge_index, graph.shifts, cell, graph.batch, graph.num_graphs, tags=graph.tags)
    results = dict(out)
    if inputs:
        grads = torch.autograd.grad(
            out["energy"].sum(), inputs, create_graph=create_graph, allow_unused=True
        )
        grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]
        if forces:
            results["forces"] = -grads[0]
        if stress:
            volume = torch.linalg.det(graph.cell).abs()
            results["stress"] = grads[-1] / volume.view(-1, 1, 1)
    return results


@dataclass
class _Item:
    index: int
    structure: Structure
    graph: AtomicGraph | None = None
    neighbors: NeighborListCache | None = None


class Predictor:
    """Batched inference with one model on one device.

    ``predict(structures)`` accepts ``ase.Atoms`` or :class:`~equiformer_calc.graph.Structure`
    objects, validates them (clear :class:`StructureError` / :class:`UnknownElementError`),
    groups them into batches of at most ``max_atoms_per_batch`` atoms and returns one dict of
    numpy arrays per structure, in input order, with the same numbers as one-by-one calls.
    """

    def __init__(
        self,
        model: Equiformer,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        max_atoms_per_batch: int = 2048,
    ) -> None:
        configure_runtime()
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.max_atoms_per_batch = int(max_atoms_per_batch)

    @property
    def cutoff(self) -> float:
        return self.model.cutoff

    @property
    def elements(self) -> list[str]:
        return self.model.elements

    def to_structure(self, item: Any) -> Structure:
        """Validate one input (Atoms or Structure), including its elements."""
        structure = item if isinstance(item, Structure) else structure_from_atoms(item)
        self.model.species_index(torch.from_numpy(structure.numbers))  # raises UnknownElementError
        return structure

    def graph(self, structure: Structure, neighbors: NeighborListCache | None = None) -> AtomicGraph:
        """The radius graph of one structure, on the model's device and dtype (``neighbors``: a
        skin cache for this structure, see :class:`~equiformer_calc.graph.NeighborListCache`)."""
        return build_graph(structure, self.cutoff, dtype=torch.float64, neighbors=neighbors).to(self.device, self.dtype)

    def predict(
        self,
        structures: Sequence[Any] | Iterable[Any],
        properties: Sequence[str] = ("energy", "forces"),
        neighbor_caches: Sequence[NeighborListCache | None] | None = None,
    ) -> list[dict[str, np.ndarray | float]]:
        """Evaluate many structures; stress is returned for the 3D-periodic ones when asked.

        ``neighbor_caches`` (optional, one entry per structure, ``None`` allowed) lets callers that
        evaluate slowly changing structures (MD, relaxations) reuse neighbour lists between calls;
        the results are the same as without.
        """
        unknown = set(properties) - set(ALL_PROPERTIES)
        if unknown:
            raise ValueError(f"unknown properties {sorted(unknown)}; available: {list(ALL_PROPERTIES)}")
        items = [_Item(k, self.to_structure(s)) for k, s in enumerate(structures)]
        if neighbor_caches is not None:
            if len(neighbor_caches) != len(items):
                raise ValueError(f"{len(neighbor_caches)} neighbor caches for {len(items)} structures")
            for it, cache in zip(items, neighbor_caches):
                it.neighbors = cache
        want_stress = "stress" in properties
        task = model_task(self.model)
        if task != "potential" and (want_stress or "forces" in properties):
            raise NotAPotentialError(not_a_potential_message(task, "forces" if "forces" in properties else "stress"))
        if want_stress:
            for it in items:
                if not it.structure.pbc.all():
                    raise StructureError(
                        f"stress requested for structure {it.index}, which is not periodic in all three directions"
                    )
        want_forces = "forces" in properties
        results: list[dict[str, Any]] = [dict() for _ in items]
        for chunk in self._chunks(items):
            graphs = [self.graph(it.structure, it.neighbors) for it in chunk]
            batch = batch_graphs(graphs)
            with torch.set_grad_enabled(want_forces or want_stress):
                out = compute(self.model, batch, forces=want_forces, stress=want_stress)
            ptr = batch.ptr.tolist()
            energy = out["energy"].detach().cpu().numpy()
            energies = out["energies"].detach().cpu().numpy()
            f = out["forces"].detach().cpu().double().numpy() if want_forces else None
            s = voigt(out["stress"]).detach().cpu().double().numpy() if want_stress else None
            for b, it in enumerate(chunk):
                r = results[it.index]
                r["energy"] = float(energy[b])
                r["free_energy"] = float(energy[b])
                r["energies"] = energies[ptr[b] : ptr[b + 1]].copy()
                if f is not None:
                    r["forces"] = f[ptr[b] : ptr[b + 1]].copy()
                if s is not None:
                    r["stress"] = s[b].copy()
        return results

    def _chunks(self, items: list[_Item]) -> Iterable[list[_Item]]:
        chunk: list[_Item] = []
        atoms = 0
        for it in items:
            n = len(it.structure)
            if chunk and atoms + n > self.max_atoms_per_batch:
                yield chunk
                chunk, atoms = [], 0
            chunk.append(it)
            atoms += n
        if chunk:
            yield chunk
