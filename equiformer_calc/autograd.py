"""Forward + autograd: energies, forces = -dE/dpos and stress = (1/V) dE/d(strain) of a batched
graph in one autograd pass (:func:`compute`, differentiable, torch in / torch out), and the
differentiable Voigt form of a stress (:func:`voigt`). :class:`~equiformer_calc.predictor.Predictor`
(structures in, numpy out) and the trainer's loss call :func:`compute`; import it from
``equiformer_calc.predictor``, which re-exports it.
"""

from __future__ import annotations

from typing import Any

import torch
from ase.stress import full_3x3_to_voigt_6_stress

from . import memory as memory_mod
from .graph import AtomicGraph, StructureError
from .model import Equiformer

__all__ = ["compute", "unbatch", "voigt"]


def voigt(stress: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) -> (B, 6) in ASE's Voigt order xx, yy, zz, yz, xz, xy, differentiable: for training's
    stress loss, which needs the torch graph. Everything that returns numbers uses ASE's
    ``full_3x3_to_voigt_6_stress``; a test checks that the two agree on symmetric stresses."""
    return stress[:, [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]


def compute(
    model: Equiformer,
    graph: AtomicGraph,
    forces: bool = True,
    stress: bool = False,
    create_graph: bool = False,
    memory: str = "fast",
    retain_graph: bool = False,
) -> dict[str, torch.Tensor]:
    """Energies, and forces = -dE/dpos and stress = (1/V) dE/d(strain) from one autograd pass.

    ``memory="low"`` evaluates the model in low-memory mode (per-edge work in chunks of
    :data:`LOW_MEMORY_EDGE_CHUNK` edges, recomputed in the backward pass; same numbers to
    round-off, see :data:`MEMORY_MODES`); it also works with ``create_graph`` (training), where the
    chunks are recomputed once more for the second derivative.

    ``graph`` must already be on the model's device; its positions, cell and shifts may stay
    float64 (the model forms edge vectors in float64 and casts them to its own dtype). ``stress``
    requires every graph of the batch to be periodic in 3D. With ``create_graph`` the results can be differentiated
    again (training on forces); with ``retain_graph`` the graph survives the backward pass (the
    committee's per-member forces, :mod:`equiformer_calc.committee`). Returns ``energy`` (B,) float64, ``energies`` (N,) float64,
    ``forces`` (N, 3) and ``stress`` (B, 3, 3) in the graph's positions' dtype.
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
    if memory not in ("fast", "low"):
        raise ValueError(f"compute() takes memory='fast' or 'low', got {memory!r} (the Predictor resolves 'auto')")
    chunk = memory_mod.LOW_MEMORY_EDGE_CHUNK if memory == "low" else None
    out = model(
        graph.numbers, positions, graph.edge_index, graph.shifts, cell, graph.batch, graph.num_graphs, tags=graph.tags,
        edge_chunk=chunk,
    )
    results = dict(out)
    if inputs:
        grads = torch.autograd.grad(
            out["energy"].sum(), inputs, create_graph=create_graph, retain_graph=retain_graph or create_graph,
            allow_unused=True,
        )
        grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]
        if forces:
            results["forces"] = -grads[0]
        if stress:
            volume = torch.linalg.det(graph.cell).abs()
            results["stress"] = grads[-1] / volume.view(-1, 1, 1)
    return results


def unbatch(out: dict[str, torch.Tensor], ptr: list[int], forces: bool, stress: bool) -> list[dict[str, Any]]:
    """One dict of numpy results (ASE names: energy, free_energy, energies, forces and stress in Voigt
    order) per structure of a batched :func:`compute` output (``ptr``: the batch's atom offsets)."""
    energy = out["energy"].detach().cpu().numpy()
    energies = out["energies"].detach().cpu().numpy()
    f = out["forces"].detach().cpu().double().numpy() if forces else None
    s = full_3x3_to_voigt_6_stress(out["stress"].detach().cpu().double().numpy()) if stress else None
    results = []
    for b in range(len(ptr) - 1):
        r: dict[str, Any] = {"energy": float(energy[b]), "free_energy": float(energy[b]),
                             "energies": energies[ptr[b] : ptr[b + 1]].copy()}
        if f is not None:
            r["forces"] = f[ptr[b] : ptr[b + 1]].copy()
        if s is not None:
            r["stress"] = s[b].copy()
        results.append(r)
    return results
