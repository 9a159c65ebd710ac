"""The one place that runs the model: graphs -> forward -> autograd forces and stress.

Everything that evaluates energies (the ASE calculator, batched relaxations, the HTTP service, the
trainer's loss) calls :func:`compute` (differentiable, torch in / torch out) or
:class:`Predictor` (structures in, numpy results out, batched by an atom budget).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .graph import (
    DEFAULT_MIN_DISTANCE_RATIO,
    AtomicGraph,
    BudgetError,
    NeighborListCache,
    Structure,
    StructureError,
    batch_graphs,
    build_graph,
    estimate_edges,
    structure_from_atoms,
)
from .model import Equiformer, EquiformerConfig, UnknownElementError
from .runtime import configure_runtime

__all__ = [
    "compute", "Predictor", "ALL_PROPERTIES", "NotAPotentialError", "model_task", "not_a_potential_message",
    "resolve_dtype", "voigt", "bytes_per_edge", "default_memory_budget", "DEFAULT_MEMORY_FRACTION",
]

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


#: the default memory budget of a :class:`Predictor` is this fraction of the machine's physical memory
DEFAULT_MEMORY_FRACTION = 0.6
# floats kept per edge and per unit of the per-edge width (see bytes_per_edge), calibrated with
# benchmarks/memory_budget.py (RESULTS.md, "Memory per edge") and rounded up
_FLOATS_PER_WIDTH_GRAD = 18.0
_FLOATS_PER_WIDTH_NOGRAD = 8.0
#: per-edge floats that do not scale with the network (indices, shifts, vectors, basis, envelope)
_FLOATS_PER_EDGE_FIXED = 64.0


def bytes_per_edge(config: EquiformerConfig, dtype: str | torch.dtype, grad: bool = True) -> float:
    """Estimated peak memory of one model call per edge (bytes), for the memory budget.

    The per-edge width of the network is ``num_blocks * (irreps_node + num_heads * irreps_head +
    sum(fc_neurons))`` (dimensions); a call with forces or stress (``grad``) keeps the per-edge
    tensors of every block for the backward pass, an energy-only call about one block's worth.
    The constants are calibrated, and the estimate compared with measured peaks, by
    ``benchmarks/memory_budget.py`` (RESULTS.md "Memory per edge"): it errs on the high side.
    """
    from e3nn import o3

    size = resolve_dtype(dtype).itemsize
    width_block = (
        o3.Irreps(config.irreps_node).dim
        + config.num_heads * o3.Irreps(config.irreps_head).dim
        + sum(config.fc_neurons)
    )
    if grad:
        floats = _FLOATS_PER_WIDTH_GRAD * config.num_blocks * width_block
    else:
        floats = _FLOATS_PER_WIDTH_NOGRAD * width_block
    return float(size * (floats + _FLOATS_PER_EDGE_FIXED))


def default_memory_budget() -> int:
    """``DEFAULT_MEMORY_FRACTION`` of the physical memory (bytes), or 8 GiB where unknown."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 0
    return int(DEFAULT_MEMORY_FRACTION * total) if total > 0 else 8 << 30


def voigt(stress: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) -> (B, 6) in ASE's Voigt order xx, yy, zz, yz, xz, xy, differentiable (training's stress
    loss needs the torch graph; numpy code uses ASE's ``full_3x3_to_voigt_6_stress``, and a test checks
    that the two agree)."""
    return stress[:, [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]


def compute(
    model: Equiformer,
    graph: AtomicGraph,
    forces: bool = True,
    stress: bool = False,
    create_graph: bool = False,
) -> dict[str, torch.Tensor]:
    """Energies, and forces = -dE/dpos and stress = (1/V) dE/d(strain) from one autograd pass.

    ``graph`` must already be on the model's device; its positions, cell and shifts may stay
    float64 (the model forms edge vectors in float64 and casts them to its own dtype). ``stress``
    requires every graph of the batch to be periodic in 3D. With ``create_graph`` the results can be differentiated
    again (training on forces). Returns ``energy`` (B,) float64, ``energies`` (N,) float64,
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
    edges: int = 0


class Predictor:
    """Batched inference with one model on one device.

    ``predict(structures)`` accepts ``ase.Atoms`` or :class:`~equiformer_calc.graph.Structure`
    objects, validates them (clear :class:`StructureError` / :class:`UnknownElementError`),
    groups them into batches of at most ``max_atoms_per_batch`` atoms and returns one dict of
    numpy arrays per structure, in input order, with the numbers of one-by-one calls (to round-off:
    bit for bit only when the batch holds one structure; see README "Reliability").

    ``min_distance_ratio`` sets the element-aware distance floor (a fraction of the sum of
    covalent radii, :func:`~equiformer_calc.graph.distance_floor`): closer pairs raise
    :class:`StructureError`, pairs within twice the floor are logged as warnings. Lower it (0 keeps
    only the 0.1 A overlap check) to scan deliberately compressed geometries.

    Memory: before a neighbour search, every structure's edge count is estimated
    (:func:`~equiformer_calc.graph.estimate_edges`) and charged :func:`bytes_per_edge` bytes per
    edge; a structure over ``max_edges`` or whose model call would need more than ``memory_budget``
    bytes (default ``"auto"``: :data:`DEFAULT_MEMORY_FRACTION` of physical memory; ``None``: no
    limit) raises :class:`~equiformer_calc.graph.BudgetError` (a ``StructureError`` and a
    ``MemoryError``) naming the estimate and the limit, in milliseconds and before any large
    allocation; the actual edge count is checked again after the search. Batches are also cut so
    that no model call exceeds the budget.
    """

    def __init__(
        self,
        model: Equiformer,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        max_atoms_per_batch: int = 2048,
        min_distance_ratio: float = DEFAULT_MIN_DISTANCE_RATIO,
        memory_budget: int | str | None = "auto",
        max_edges: int | None = None,
    ) -> None:
        configure_runtime()
        if memory_budget == "auto":
            memory_budget = default_memory_budget()
        elif memory_budget is not None and (isinstance(memory_budget, str) or not memory_budget > 0):
            raise ValueError(f"memory_budget must be 'auto', None or a positive number of bytes, got {memory_budget!r}")
        if max_edges is not None and not max_edges > 0:
            raise ValueError(f"max_edges must be positive or None, got {max_edges}")
        self.memory_budget: int | None = None if memory_budget is None else int(memory_budget)
        self.max_edges: int | None = None if max_edges is None else int(max_edges)
        if not min_distance_ratio >= 0:
            raise ValueError(f"min_distance_ratio must be >= 0, got {min_distance_ratio}")
        self.min_distance_ratio = float(min_distance_ratio)
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.max_atoms_per_batch = int(max_atoms_per_batch)

    @property
    def cutoff(self) -> float:
        return self.model.cutoff

    def bytes_per_edge(self, properties: Sequence[str] = ("energy", "forces")) -> float:
        """Estimated peak bytes per edge of a model call for ``properties`` (see :func:`bytes_per_edge`)."""
        grad = "forces" in properties or "stress" in properties
        return bytes_per_edge(self.model.config, self.dtype, grad)

    def edge_limit(self, properties: Sequence[str] = ("energy", "forces")) -> int | None:
        """The most edges one model call may have: ``max_edges`` and the memory budget, whichever is
        smaller (``None``: unlimited)."""
        limits = [] if self.max_edges is None else [self.max_edges]
        if self.memory_budget is not None:
            limits.append(int(self.memory_budget // self.bytes_per_edge(properties)))
        return min(limits) if limits else None

    def check_budget(self, structure: Structure, properties: Sequence[str] = ("energy", "forces"),
                     edges: int | None = None) -> int:
        """The edge count of one structure (``edges`` if known, else the estimate); raises
        :class:`~equiformer_calc.graph.BudgetError` naming the estimate and the limit when it is
        over ``max_edges`` or its model call would exceed the memory budget."""
        estimated = edges is None
        if edges is None:
            edges = estimate_edges(structure, self.cutoff)
        what = "about" if estimated else "exactly"
        if self.max_edges is not None and edges > self.max_edges:
            raise BudgetError(
                f"{len(structure)} atoms with the model's {self.cutoff:g} A cutoff make {what} {edges:,} edges, "
                f"over the limit of {self.max_edges:,} edges per structure",
                estimate=edges, limit=self.max_edges, unit="edges",
            )
        if self.memory_budget is not None:
            need = edges * self.bytes_per_edge(properties)
            if need > self.memory_budget:
                raise BudgetError(
                    f"{len(structure)} atoms with the model's {self.cutoff:g} A cutoff make {what} {edges:,} edges; "
                    f"evaluating {', '.join(properties)} would need about {need / 2**30:.3g} GiB, over the memory "
                    f"budget of {self.memory_budget / 2**30:.3g} GiB; use a smaller structure (or raise memory_budget)",
                    estimate=need, limit=self.memory_budget, unit="bytes",
                )
        return edges

    @property
    def elements(self) -> list[str]:
        return self.model.elements

    def to_structure(self, item: Any) -> Structure:
        """Validate one input (Atoms or Structure), including its elements."""
        structure = item if isinstance(item, Structure) else structure_from_atoms(item)
        self.model.species_index(torch.from_numpy(structure.numbers))  # raises UnknownElementError
        return structure

    def graph(self, structure: Structure, neighbors: NeighborListCache | None = None) -> AtomicGraph:
        """The radius graph of one structure on the model's device, positions in float64 (``neighbors``:
        a skin cache for this structure, see :class:`~equiformer_calc.graph.NeighborListCache`)."""
        graph = build_graph(
            structure, self.cutoff, dtype=torch.float64, neighbors=neighbors, min_distance_ratio=self.min_distance_ratio
        )
        return graph.to(self.device)

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
        for it in items:  # cheap estimates, before any neighbour search
            it.edges = self._locate_budget(it, properties)
        results: list[dict[str, Any]] = [dict() for _ in items]
        for chunk in self._chunks(items, properties):
            graphs = [self._located_graph(it) for it in chunk]
            for it, g in zip(chunk, graphs):  # the actual counts, before the model call
                self._locate_budget(it, properties, g.num_edges)
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

    def _located_graph(self, it: _Item) -> AtomicGraph:
        """The graph of one item; a StructureError names the structure's index in the call."""
        try:
            return self.graph(it.structure, it.neighbors)
        except BudgetError as exc:
            raise BudgetError(f"structure {it.index}: {exc}", exc.estimate, exc.limit, exc.unit) from None
        except StructureError as exc:
            raise StructureError(f"structure {it.index}: {exc}") from None

    def _locate_budget(self, it: _Item, properties: Sequence[str], edges: int | None = None) -> int:
        try:
            return self.check_budget(it.structure, properties, edges)
        except BudgetError as exc:
            raise BudgetError(f"structure {it.index}: {exc}", exc.estimate, exc.limit, exc.unit) from None
        except StructureError as exc:  # the estimate's own checks (extent)
            raise StructureError(f"structure {it.index}: {exc}") from None

    def _chunks(self, items: list[_Item], properties: Sequence[str] = ("energy", "forces")) -> Iterable[list[_Item]]:
        """Consecutive items, cut at ``max_atoms_per_batch`` atoms and at the edge limit."""
        edge_limit = self.edge_limit(properties)
        chunk: list[_Item] = []
        atoms = edges = 0
        for it in items:
            n = len(it.structure)
            over_edges = edge_limit is not None and edges + it.edges > edge_limit
            if chunk and (atoms + n > self.max_atoms_per_batch or over_edges):
                yield chunk
                chunk, atoms, edges = [], 0, 0
            chunk.append(it)
            atoms += n
            edges += it.edges
        if chunk:
            yield chunk
