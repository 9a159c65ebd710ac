"""The one place that runs the model: graphs -> forward -> autograd forces and stress.

Everything that evaluates energies (the ASE calculator, batched relaxations, the HTTP service, the
trainer's loss) calls :func:`compute` (differentiable, torch in / torch out) or
:class:`Predictor` (structures in, numpy results out, batched by an atom budget).
"""

from __future__ import annotations

import contextlib
import logging
import os
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
from .model import Equiformer, EquiformerConfig, UnknownElementError
from .runtime import configure_runtime, thread_policy

__all__ = [
    "compute", "Predictor", "ALL_PROPERTIES", "NotAPotentialError", "model_task", "not_a_potential_message", "resolve_dtype",
    "voigt", "MEMORY_MODES", "LOW_MEMORY_EDGE_CHUNK", "MemoryBudgetError", "bytes_per_edge", "call_bytes",
    "available_memory", "resolve_memory_mode",
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


# ------------------------------------------------------------------------------------ memory modes
#: How a model call uses memory. "fast": every per-edge tensor of every block is kept for the
#: backward pass (forces, stress). "low": the per-edge work runs in chunks of
#: :data:`LOW_MEMORY_EDGE_CHUNK` edges under activation checkpointing and is recomputed in the
#: backward pass (``nn/edge_chunks.py``): same numbers to round-off, a fraction of the memory, about
#: one more forward pass of time. "auto": "fast" when its estimate fits the memory available now,
#: else "low" (see :meth:`Predictor.memory_mode`).
MEMORY_MODES = ("auto", "fast", "low")
#: edges per chunk in low-memory mode (benchmarks/memory.py: the chunk's working set is a few
#: hundred MB for the shipped size; smaller chunks save little memory and cost per-chunk overhead)
LOW_MEMORY_EDGE_CHUNK = 8192
#: "auto" and the budget check leave this fraction of the available memory unused (the estimate
#: is of the model call only; Python, the graph and the results need some too)
MEMORY_HEADROOM = 0.8

# The memory model of one call: bytes = edges * bytes_per_edge(mode) + (low mode) one chunk's
# working set. Measured with benchmarks/memory.py (peak RSS increase of one call, each size in a
# fresh process, 'small' preset, float32, Cu bulk of 500, 2,000 and 8,000 atoms, and a 30,000-atom
# end-to-end run; RESULTS.md "Memory per atom and low-memory mode") and expressed per "width unit"
# so that it follows the layer sizes: the per-edge width of a block is irreps_node + num_heads *
# irreps_head + sum(fc_neurons) dimensions (304 for 'small'). Forces/stress in fast mode keep
# _FAST_FLOATS_PER_WIDTH floats per width unit, edge and block (measured 35.6-42.0 kB per edge,
# i.e. 9.7-11.4); an energy-only fast call about one block's transients (_NOGRAD_FLOATS_PER_WIDTH,
# measured 5.4). Low mode keeps the shared edge geometry (_LOW_FLOATS_PER_EDGE + the fixed part:
# the fit over 500-8,000 atoms gives 1.0 kB per edge) plus one chunk's working set
# (_LOW_CHUNK_FLOATS_PER_WIDTH per width unit and edge of a chunk: the fit's intercept, 113 MB,
# against 199 MB here; ~6 energy-only). Every constant errs on the high side of the measurements.
_FAST_FLOATS_PER_WIDTH = 11.5
_NOGRAD_FLOATS_PER_WIDTH = 5.5
_LOW_FLOATS_PER_EDGE = 200.0
_LOW_CHUNK_FLOATS_PER_WIDTH = 20.0
_LOW_CHUNK_NOGRAD_FLOATS_PER_WIDTH = 6.0
#: per-edge floats of every mode (indices, shifts, vectors, basis, envelope)
_FLOATS_PER_EDGE_FIXED = 64.0


class MemoryBudgetError(MemoryError):
    """A model call whose estimated memory exceeds what is available: ``estimate`` and ``limit``
    (bytes) are attributes and appear in the message, as do the edge count and the mode."""

    def __init__(self, message: str, estimate: float, limit: float) -> None:
        super().__init__(message)
        self.estimate = estimate
        self.limit = limit

    def __reduce__(self):  # keeps its attributes across process boundaries (service workers)
        return (type(self), (str(self), self.estimate, self.limit))


def resolve_memory_mode(memory: str) -> str:
    """Validate a memory mode name (one of :data:`MEMORY_MODES`)."""
    if memory not in MEMORY_MODES:
        raise ValueError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")
    return memory


def _block_width(config: EquiformerConfig) -> int:
    from e3nn import o3

    return o3.Irreps(config.irreps_node).dim + config.num_heads * o3.Irreps(config.irreps_head).dim + sum(config.fc_neurons)


def bytes_per_edge(config: EquiformerConfig, dtype: str | torch.dtype, grad: bool = True, memory: str = "fast") -> float:
    """Estimated memory of one model call per edge (bytes) in a memory mode ("fast" or "low"),
    with forces or stress (``grad``) or energy only. See :func:`call_bytes` for the whole call."""
    if memory not in ("fast", "low"):
        raise ValueError(f"bytes_per_edge needs a concrete mode, 'fast' or 'low', got {memory!r}")
    size = resolve_dtype(dtype).itemsize
    if memory == "low":
        floats = _LOW_FLOATS_PER_EDGE if grad else 0.0
    elif grad:
        floats = _FAST_FLOATS_PER_WIDTH * config.num_blocks * _block_width(config)
    else:
        floats = _NOGRAD_FLOATS_PER_WIDTH * _block_width(config)
    return float(size * (floats + _FLOATS_PER_EDGE_FIXED))


def call_bytes(config: EquiformerConfig, dtype: str | torch.dtype, edges: int, grad: bool = True, memory: str = "fast") -> float:
    """Estimated peak memory (bytes) of one model call on ``edges`` edges: ``edges *``
    :func:`bytes_per_edge` plus, in low mode, the working set of one chunk of
    :data:`LOW_MEMORY_EDGE_CHUNK` edges. This is the one memory model of the package (the
    automatic mode choice and the budget check use it); an edge count estimated before the
    neighbour search can be passed as well as an exact one."""
    total = edges * bytes_per_edge(config, dtype, grad, memory)
    if memory == "low":
        chunk = min(int(edges), LOW_MEMORY_EDGE_CHUNK)
        per_width = _LOW_CHUNK_FLOATS_PER_WIDTH if grad else _LOW_CHUNK_NOGRAD_FLOATS_PER_WIDTH
        total += chunk * resolve_dtype(dtype).itemsize * per_width * _block_width(config)
    return float(total)


def available_memory(device: str | torch.device = "cpu") -> int | None:
    """Bytes that a new allocation can use now. CPU: ``MemAvailable`` of /proc/meminfo, capped by a
    cgroup (v2) memory limit when one is set; ``None`` where neither is readable (then no
    budget is enforced unless one is given). CUDA: the device's free memory plus what torch's
    caching allocator holds but does not use."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None
    avail: int | None = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            import psutil  # optional

            avail = int(psutil.virtual_memory().available)
        except (ImportError, AttributeError, OSError):
            return None
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            limit = fh.read().strip()
        with open("/sys/fs/cgroup/memory.current") as fh:
            used = int(fh.read().strip())
        if limit != "max":
            avail = min(avail, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return avail


def voigt(stress: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) -> (B, 6) in ASE's Voigt order xx, yy, zz, yz, xz, xy."""
    return stress[:, [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]


def compute(
    model: Equiformer,
    graph: AtomicGraph,
    forces: bool = True,
    stress: bool = False,
    create_graph: bool = False,
    memory: str = "fast",
) -> dict[str, torch.Tensor]:
    """Energies, and forces = -dE/dpos and stress = (1/V) dE/d(strain) from one autograd pass.

    ``memory="low"`` evaluates the model in low-memory mode (per-edge work in chunks of
    :data:`LOW_MEMORY_EDGE_CHUNK` edges, recomputed in the backward pass; same numbers to
    round-off, see :data:`MEMORY_MODES`); it also works with ``create_graph`` (training), where the
    chunks are recomputed once more for the second derivative.

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
    if memory not in ("fast", "low"):
        raise ValueError(f"compute() takes memory='fast' or 'low', got {memory!r} (the Predictor resolves 'auto')")
    chunk = LOW_MEMORY_EDGE_CHUNK if memory == "low" else None
    out = model(
        graph.numbers, positions, graph.edge_index, graph.shifts, cell, graph.batch, graph.num_graphs, tags=graph.tags,
        edge_chunk=chunk,
    )
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

    Memory: ``memory`` is one of :data:`MEMORY_MODES`. Before every model call the predictor
    estimates its memory from the batch's edge count (:func:`call_bytes`) and compares it with
    ``memory_budget`` (bytes; default ``"auto"``: :data:`MEMORY_HEADROOM` of the memory available
    at that moment, :func:`available_memory`, or the GPU's free memory for a CUDA device; ``None``:
    no limit, and "auto" mode then always runs "fast"). "auto"
    runs the call in "fast" mode when that fits and in "low" mode otherwise; a call that does not
    fit even in its mode raises :class:`MemoryBudgetError` (a ``MemoryError``) naming the
    estimate and the limit, before any large allocation, instead of being killed by the system.

    Threads: with ``threads="auto"`` (default) a call under
    :data:`~equiformer_calc.runtime.SMALL_CALL_EDGES` edges runs on one thread and larger calls on
    the threads torch is set to (``torch.set_num_threads``; never more), the measured policy of
    :func:`~equiformer_calc.runtime.thread_policy`; ``None`` leaves torch's setting alone.
    """

    def __init__(
        self,
        model: Equiformer,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        max_atoms_per_batch: int = 2048,
        memory: str = "auto",
        memory_budget: int | str | None = "auto",
        threads: str | None = "auto",
    ) -> None:
        configure_runtime()
        if threads not in ("auto", None):
            raise ValueError(f"threads must be 'auto' or None, got {threads!r}")
        self.threads = threads
        self.memory = resolve_memory_mode(memory)
        if memory_budget != "auto" and memory_budget is not None and (isinstance(memory_budget, str) or not memory_budget > 0):
            raise ValueError(f"memory_budget must be 'auto', None or a positive number of bytes, got {memory_budget!r}")
        self.memory_budget: int | str | None = memory_budget if memory_budget in ("auto", None) else int(memory_budget)
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

    # ------------------------------------------------------------------------------ memory
    def estimate_bytes(self, edges: int, properties: Sequence[str] = ("energy", "forces"), memory: str = "fast") -> float:
        """Estimated peak bytes of one model call on ``edges`` edges (exact or estimated) in mode
        ``memory`` ("fast" or "low"); see :func:`call_bytes`."""
        grad = "forces" in properties or "stress" in properties
        return call_bytes(self.model.config, self.dtype, int(edges), grad, memory)

    def memory_limit(self) -> int | None:
        """Bytes one model call may use now: ``memory_budget`` when it is a number, for "auto"
        :data:`MEMORY_HEADROOM` of the available memory of the device (``None``: no limit or unknown)."""
        if self.memory_budget != "auto":
            return self.memory_budget  # type: ignore[return-value]
        avail = available_memory(self.device)
        return None if avail is None else int(MEMORY_HEADROOM * avail)

    def memory_mode(self, edges: int, properties: Sequence[str] = ("energy", "forces"), structures: int = 1) -> str:
        """The mode ("fast" or "low") of a model call on ``edges`` edges: the configured one, or for
        "auto" "fast" when its estimate fits :meth:`memory_limit` and "low" otherwise. Raises
        :class:`MemoryBudgetError` when the call does not fit in the chosen mode."""
        limit = self.memory_limit()
        mode = self.memory
        if mode == "auto":
            fits_fast = limit is None or self.estimate_bytes(edges, properties, "fast") <= limit
            mode = "fast" if fits_fast else "low"
        need = self.estimate_bytes(edges, properties, mode)
        if limit is not None and need > limit:
            what = f"{structures} structures with" if structures > 1 else "a structure with"
            hint = "" if mode == "low" else " or memory='low'"
            raise MemoryBudgetError(
                f"{what} {edges:,} edges (model cutoff {self.cutoff:g} A) needs about {need / 2**30:.3g} GiB to evaluate "
                f"{', '.join(properties)} in memory='{mode}' mode, more than the {limit / 2**30:.3g} GiB "
                f"{'available now' if self.memory_budget == 'auto' else 'budget'}; use a smaller structure{hint}, "
                "or free memory",
                estimate=need, limit=limit,
            )
        return mode

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
            mode = self.memory_mode(batch.num_edges, properties, len(chunk))
            with torch.set_grad_enabled(want_forces or want_stress), self._threads_for(batch):
                out = compute(self.model, batch, forces=want_forces, stress=want_stress, memory=mode)
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

    @contextlib.contextmanager
    def _threads_for(self, batch: AtomicGraph):
        """One thread for a small call (see ``runtime.thread_policy``), torch's setting otherwise."""
        before = torch.get_num_threads()
        wanted = min(before, thread_policy(batch.num_atoms, batch.num_edges, before)[0]) if self.threads == "auto" else before
        if wanted == before or self.device.type != "cpu":
            yield
            return
        torch.set_num_threads(wanted)
        try:
            yield
        finally:
            torch.set_num_threads(before)

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
