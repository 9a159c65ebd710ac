"""The one place that runs the model: graphs -> forward -> autograd forces and stress.

Everything that evaluates energies (the ASE calculator, batched relaxations, the HTTP service, the
trainer's loss) calls :func:`compute` (differentiable, torch in / torch out) or
:class:`Predictor` (structures in, numpy results out, batched by an atom budget).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import weakref
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from ase.stress import full_3x3_to_voigt_6_stress

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
from .runtime import call_threads, configure_runtime, heap_free_bytes

__all__ = [
    "compute", "Predictor", "ALL_PROPERTIES", "NotAPotentialError", "model_task", "not_a_potential_message",
    "resolve_dtype", "voigt", "MEMORY_MODES", "LOW_MEMORY_EDGE_CHUNK", "MEMORY_HEADROOM", "MemoryBudgetError",
    "resolve_memory_mode", "bytes_per_edge", "call_bytes", "available_memory", "total_memory",
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
    return str(model.metadata.get("task", "potential"))


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


# ------------------------------------------------------------------------------------ memory
#: How a model call uses memory. "fast": every per-edge tensor of every block is kept for the
#: backward pass (forces, stress). "low": the per-edge work runs in chunks of
#: :data:`LOW_MEMORY_EDGE_CHUNK` edges under activation checkpointing and is recomputed in the
#: backward pass (``nn/edge_chunks.py``): same numbers to round-off, a fraction of the memory, about
#: one more forward pass of time. "auto": "fast" when its estimate fits the memory limit, else
#: "low" (see :meth:`Predictor.memory_mode`).
MEMORY_MODES = ("auto", "fast", "low")
#: edges per chunk in low-memory mode (benchmarks/memory.py: the chunk's working set is a few
#: hundred MB for the shipped size; smaller chunks save little memory and cost per-chunk overhead)
LOW_MEMORY_EDGE_CHUNK = 8192
#: ``memory_budget="auto"``: a model call may use this fraction of the memory available when it
#: starts (the estimate is of the model call only; Python, the graph and the results need some too)
MEMORY_HEADROOM = 0.8

# THE memory model of one call: bytes = edges * bytes_per_edge(mode) + (low mode) one chunk's
# working set, expressed per "width unit" so that it follows the layer sizes: the per-edge width
# of a block is irreps_node + num_heads * irreps_head + sum(fc_neurons) dimensions (304 for
# 'small', 86 for 'tiny', 1088 for 'md17-l2'). Measured as the peak RSS increase of one call in a
# fresh process by benchmarks/memory_budget.py (three presets, float32/float64; RESULTS.md "Memory
# per edge") and benchmarks/memory.py ('small', Cu bulk of 500, 2,000 and 8,000 atoms in both
# modes and a 30,000-atom end-to-end run; RESULTS.md "Memory per atom and low-memory mode").
# Forces/stress in fast mode keep _FAST_FLOATS_PER_WIDTH floats per width unit, edge and block
# (measured 13.6 tiny, 9.7-12.5 small, 8.9 md17-l2); an energy-only fast call about one block's
# transients (_NOGRAD_FLOATS_PER_WIDTH, measured 5.4-6.7). Low mode keeps the shared edge geometry
# (_LOW_FLOATS_PER_EDGE + the fixed part: the fit over 500-8,000 atoms gives 1.0 kB per edge) plus
# one chunk's working set (_LOW_CHUNK_FLOATS_PER_WIDTH per width unit and edge of a chunk: the
# fit's intercept, 113 MB, against 199 MB here; ~6 energy-only). Every constant errs on the high
# side of the largest measurement.
_FAST_FLOATS_PER_WIDTH = 15.0
_NOGRAD_FLOATS_PER_WIDTH = 7.5
_LOW_FLOATS_PER_EDGE = 200.0
_LOW_CHUNK_FLOATS_PER_WIDTH = 20.0
_LOW_CHUNK_NOGRAD_FLOATS_PER_WIDTH = 6.0
#: per-edge floats of every mode (indices, shifts, vectors, basis, envelope)
_FLOATS_PER_EDGE_FIXED = 64.0


class MemoryBudgetError(BudgetError):
    """A model call whose estimated memory exceeds its limit (``memory_budget``, or for "auto" the
    share of the memory available now): a :class:`~equiformer_calc.graph.BudgetError` in bytes, so
    one ``except BudgetError`` (or ``MemoryError``) catches both budgets. ``estimate`` and
    ``limit`` are attributes and appear in the message, as do the edge count and the mode. The
    service answers it 507 (the edge-count limits are 413)."""

    def __init__(self, message: str, estimate: float, limit: float, unit: str = "bytes") -> None:
        super().__init__(message, estimate, limit, unit)


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


def _chunk_bytes(config: EquiformerConfig, dtype: str | torch.dtype, grad: bool) -> float:
    """Working set of one low-mode chunk per edge of the chunk (bytes)."""
    per_width = _LOW_CHUNK_FLOATS_PER_WIDTH if grad else _LOW_CHUNK_NOGRAD_FLOATS_PER_WIDTH
    return float(resolve_dtype(dtype).itemsize * per_width * _block_width(config))


def call_bytes(config: EquiformerConfig, dtype: str | torch.dtype, edges: int, grad: bool = True, memory: str = "fast") -> float:
    """Estimated peak memory (bytes) of one model call on ``edges`` edges: ``edges *``
    :func:`bytes_per_edge` plus, in low mode, the working set of one chunk of
    :data:`LOW_MEMORY_EDGE_CHUNK` edges. This is the one memory model of the package (the
    automatic mode choice, the budget check, the batching and the service's edge limits use it);
    an edge count estimated before the neighbour search can be passed as well as an exact one."""
    total = edges * bytes_per_edge(config, dtype, grad, memory)
    if memory == "low":
        total += min(int(edges), LOW_MEMORY_EDGE_CHUNK) * _chunk_bytes(config, dtype, grad)
    return float(total)


def _cgroup_memory() -> tuple[int, int] | None:
    """(limit, used) bytes of this process's cgroup (v2) when it has a memory limit, else None."""
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            limit = fh.read().strip()
        with open("/sys/fs/cgroup/memory.current") as fh:
            used = int(fh.read().strip())
        return None if limit == "max" else (int(limit), used)
    except (OSError, ValueError):
        return None


def available_memory(device: str | torch.device = "cpu") -> int | None:
    """Bytes that a new allocation can use now. CPU: ``MemAvailable`` of /proc/meminfo (psutil
    elsewhere), capped by a cgroup (v2) memory limit when one is set, plus the free memory glibc's
    heap holds for this process (``runtime.heap_free_bytes``); ``None`` where it cannot be read
    (then "auto" enforces no budget). CUDA: the device's free memory plus what torch's
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
    # what glibc's heap keeps for this process (configure_runtime never trims it) is free to us;
    # part of it may never have been touched (not resident, so also in MemAvailable): never more
    # than all memory
    held = heap_free_bytes()
    cgroup = _cgroup_memory()
    if cgroup is not None:
        avail = min(avail, max(cgroup[0] - cgroup[1], 0))
    total = total_memory()  # capped by the cgroup limit too
    return avail + held if total is None else min(avail + held, total)


def total_memory(device: str | torch.device = "cpu") -> int | None:
    """All the memory of the device (bytes): physical memory capped by a cgroup (v2) limit for the
    CPU, the GPU's memory for CUDA; ``None`` where unknown. The most :func:`available_memory` can
    ever be: the service derives its edge limits from it."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type != "cpu":
        return None
    try:
        total = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None
    cgroup = _cgroup_memory()
    if cgroup is not None:
        total = min(total, cgroup[0])
    return total if total > 0 else None


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
    chunk = LOW_MEMORY_EDGE_CHUNK if memory == "low" else None
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


#: models that belong to a predictor (converted in place by it): a second owner is refused
_HANDED_OVER: "weakref.WeakSet[Equiformer]" = weakref.WeakSet()


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

    Memory: ``memory`` is one of :data:`MEMORY_MODES`. Before any neighbour search, every
    structure's edge count is estimated (:func:`~equiformer_calc.graph.estimate_edges`) and its
    model call charged :func:`call_bytes` (the one memory model). ``memory_budget`` is the limit
    of one call: a number of bytes, ``"auto"`` (default; :data:`MEMORY_HEADROOM` of the memory
    available when the call starts, :func:`available_memory`: /proc/meminfo and the cgroup limit,
    or the GPU's free memory) or ``None`` (no limit; "auto" mode then always runs "fast"). A
    structure over ``max_edges`` raises :class:`~equiformer_calc.graph.BudgetError` (unit
    "edges"); one that does not fit the limit even in the leanest mode allowed ("low" unless
    ``memory="fast"``) raises :class:`MemoryBudgetError` (a ``BudgetError`` in bytes, and a
    ``MemoryError``). Both name the estimate and the limit, come in milliseconds before any large
    allocation, and are checked again with the exact edge count after the search. Batches are cut
    so that every call fits in "fast" mode where a structure alone does; "auto" runs a call "fast"
    when it fits and "low" otherwise (:meth:`memory_mode`).

    Threads: with ``threads="auto"`` (default) each call runs on the threads of the measured policy
    :func:`~equiformer_calc.runtime.thread_policy`, never more than torch is set to
    (``torch.set_num_threads``): all of them on a quiet machine, one fewer for each core that other
    processes keep busy (measured since the previous call); ``None`` leaves torch's setting alone.

    The model: the predictor never changes the module it is given. It works on its own copy,
    converted to ``device`` and ``dtype``, in eval mode, with frozen parameters (a copy of the
    'small' model takes ~0.2 s, ``benchmarks/predictor_copy.py``). ``copy_model=False`` hands
    the module over instead, for a model nobody else holds (one just loaded from a checkpoint):
    it is then converted in place and belongs to this predictor; handing one module to two
    predictors is an error.
    """

    def __init__(
        self,
        model: Equiformer,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        max_atoms_per_batch: int = 2048,
        min_distance_ratio: float = DEFAULT_MIN_DISTANCE_RATIO,
        memory: str = "auto",
        memory_budget: int | str | None = "auto",
        max_edges: int | None = None,
        threads: str | None = "auto",
        copy_model: bool = True,
    ) -> None:
        configure_runtime()
        if threads not in ("auto", None):
            raise ValueError(f"threads must be 'auto' or None, got {threads!r}")
        self.threads = threads
        self.memory = resolve_memory_mode(memory)
        if memory_budget not in ("auto", None) and (isinstance(memory_budget, str) or not memory_budget > 0):
            raise ValueError(f"memory_budget must be 'auto', None or a positive number of bytes, got {memory_budget!r}")
        if max_edges is not None and not max_edges > 0:
            raise ValueError(f"max_edges must be positive or None, got {max_edges}")
        self.memory_budget: int | str | None = memory_budget if memory_budget in ("auto", None) else int(memory_budget)
        self.max_edges: int | None = None if max_edges is None else int(max_edges)
        if not min_distance_ratio >= 0:
            raise ValueError(f"min_distance_ratio must be >= 0, got {min_distance_ratio}")
        self.min_distance_ratio = float(min_distance_ratio)
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype)
        if not isinstance(model, Equiformer):
            raise TypeError(f"Predictor needs an Equiformer model, got {type(model).__name__}")
        if copy_model:
            model = copy.deepcopy(model)
        elif model in _HANDED_OVER:
            raise ValueError("this model was already handed to another Predictor (copy_model=False); a predictor "
                             "converts the module it owns, so give each one its own (the default copy_model=True)")
        _HANDED_OVER.add(model)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.max_atoms_per_batch = int(max_atoms_per_batch)
        #: a :class:`~equiformer_calc.committee.HeadCommittee` (set by :meth:`set_committee`): adds
        #: ``energy_uncertainty`` / ``energy_committee`` (and ``forces_uncertainty``) to every result
        self.committee: Any = None
        self.uncertainty = "off"

    def set_committee(self, committee: Any, uncertainty: str = "energy") -> None:
        """Attach a :class:`~equiformer_calc.committee.HeadCommittee` (None detaches it);
        ``uncertainty`` "energy", "forces" or "off" (see :data:`~equiformer_calc.committee.UNCERTAINTY_MODES`)."""
        if uncertainty not in ("off", "energy", "forces"):
            raise ValueError(f"uncertainty must be 'off', 'energy' or 'forces', got {uncertainty!r}")
        mode = uncertainty
        self.committee = None if committee is None or mode == "off" else committee.to(self.device, self.dtype)
        self.uncertainty = mode if self.committee is not None else "off"

    @property
    def cutoff(self) -> float:
        return self.model.cutoff

    @property
    def elements(self) -> list[str]:
        return self.model.elements

    # ------------------------------------------------------------------------------ memory
    def bytes_per_edge(self, properties: Sequence[str] = ("energy", "forces"), memory: str = "fast") -> float:
        """Estimated bytes per edge of a model call for ``properties`` in mode ``memory`` ("fast" or
        "low"; see :func:`bytes_per_edge`)."""
        grad = "forces" in properties or "stress" in properties
        return bytes_per_edge(self.model.config, self.dtype, grad, memory)

    def estimate_bytes(self, edges: int, properties: Sequence[str] = ("energy", "forces"), memory: str = "fast") -> float:
        """Estimated peak bytes of one model call on ``edges`` edges (exact or estimated) in mode
        ``memory`` ("fast" or "low"); see :func:`call_bytes`."""
        grad = "forces" in properties or "stress" in properties
        return call_bytes(self.model.config, self.dtype, int(edges), grad, memory)

    def call_edges(self, limit: float, properties: Sequence[str] = ("energy", "forces"), memory: str = "fast") -> int:
        """The most edges one model call in mode ``memory`` may have within ``limit`` bytes (the
        inverse of :meth:`estimate_bytes`)."""
        grad = "forces" in properties or "stress" in properties
        per_edge = bytes_per_edge(self.model.config, self.dtype, grad, memory)
        if memory == "fast":
            return max(int(limit // per_edge), 0)
        chunk = _chunk_bytes(self.model.config, self.dtype, grad)
        if limit <= LOW_MEMORY_EDGE_CHUNK * (per_edge + chunk):  # within one chunk
            return max(int(limit // (per_edge + chunk)), 0)
        return int((limit - LOW_MEMORY_EDGE_CHUNK * chunk) // per_edge)

    @property
    def leanest_mode(self) -> str:
        """The mode that needs the least memory among those ``memory`` allows."""
        return "fast" if self.memory == "fast" else "low"

    def memory_limit(self) -> int | None:
        """Bytes one model call may use now: ``memory_budget`` when it is a number; for "auto"
        :data:`MEMORY_HEADROOM` of the memory available on the device now (``None``: no limit, or
        the available memory is unknown)."""
        if self.memory_budget != "auto":
            return self.memory_budget  # type: ignore[return-value]
        avail = available_memory(self.device)
        return None if avail is None else int(MEMORY_HEADROOM * avail)

    def memory_capacity(self) -> int | None:
        """The most memory a model call may ever get: ``memory_budget`` when it is a number, for
        "auto" :data:`MEMORY_HEADROOM` of all the device's memory (:func:`total_memory`; ``None``:
        unlimited or unknown). A structure over it can never be evaluated here (the service's 413
        edge limits); one within it may still not fit what is available now (507)."""
        if self.memory_budget != "auto":
            return self.memory_budget  # type: ignore[return-value]
        total = total_memory(self.device)
        return None if total is None else int(MEMORY_HEADROOM * total)

    def edge_limit(self, properties: Sequence[str] = ("energy", "forces"), limit: int | str | None = "now") -> int | None:
        """The most edges one batched model call may have: ``max_edges``, and what fits in ``limit``
        bytes (default ``"now"``: :meth:`memory_limit`; ``None``: no memory limit) in "fast" mode
        ("low" when ``memory="low"``), whichever is smaller (``None``: unlimited). A single
        structure over it still gets a call of its own (in "low" mode under "auto")."""
        if limit == "now":
            limit = self.memory_limit()
        limits = [] if self.max_edges is None else [self.max_edges]
        if limit is not None:
            limits.append(self.call_edges(limit, properties, "low" if self.memory == "low" else "fast"))
        return min(limits) if limits else None

    def _memory_error(self, what: str, edges: int, exact: bool, properties: Sequence[str], mode: str, need: float,
                      limit: int) -> MemoryBudgetError:
        hint = " (or memory='low')" if mode == "fast" else ""
        if self.memory_budget == "auto":
            over = f"over the {limit / 2**30:.3g} GiB a call may use now ({MEMORY_HEADROOM:.0%} of the available memory)"
        else:
            over = f"over the memory budget of {limit / 2**30:.3g} GiB"
        return MemoryBudgetError(
            f"{what} with the model's {self.cutoff:g} A cutoff make {'exactly' if exact else 'about'} {edges:,} edges; "
            f"evaluating {', '.join(properties)} in memory='{mode}' mode would need about {need / 2**30:.3g} GiB, "
            f"{over}; use a smaller structure{hint}, or free memory",
            estimate=need, limit=limit,
        )

    def check_budget(self, structure: Structure, properties: Sequence[str] = ("energy", "forces"),
                     edges: int | None = None, limit: int | str | None = "now") -> int:
        """The edge count of one structure (``edges`` if known, else the estimate: no neighbour
        search); raises :class:`~equiformer_calc.graph.BudgetError` when it is over ``max_edges``
        and :class:`MemoryBudgetError` when its model call would not fit ``limit`` bytes (default
        ``"now"``: :meth:`memory_limit`) even in the leanest mode allowed."""
        exact = edges is not None
        if edges is None:
            edges = estimate_edges(structure, self.cutoff)
        if self.max_edges is not None and edges > self.max_edges:
            raise BudgetError(
                f"{len(structure)} atoms with the model's {self.cutoff:g} A cutoff make {'exactly' if exact else 'about'} "
                f"{edges:,} edges, over the limit of {self.max_edges:,} edges per structure",
                estimate=edges, limit=self.max_edges, unit="edges",
            )
        if limit == "now":
            limit = self.memory_limit()
        if limit is not None:
            mode = self.leanest_mode
            need = self.estimate_bytes(edges, properties, mode)
            if need > limit:
                raise self._memory_error(f"{len(structure)} atoms", edges, exact, properties, mode, need, int(limit))
        return edges

    def memory_mode(self, edges: int, properties: Sequence[str] = ("energy", "forces"), structures: int = 1) -> str:
        """The mode ("fast" or "low") of a model call on ``edges`` (exact) edges: the configured one,
        or for "auto" "fast" when its estimate fits :meth:`memory_limit` and "low" otherwise.
        Raises :class:`MemoryBudgetError` when the call does not fit in the chosen mode."""
        limit = self.memory_limit()
        mode = self.memory
        if mode == "auto":
            fits_fast = limit is None or self.estimate_bytes(edges, properties, "fast") <= limit
            mode = "fast" if fits_fast else "low"
        need = self.estimate_bytes(edges, properties, mode)
        if limit is not None and need > limit:
            what = f"{structures} structures" if structures > 1 else "a structure"
            raise self._memory_error(what, edges, True, properties, mode, need, limit)
        return mode

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
        limit = self.memory_limit()  # one reading for the estimates and the batching; memory_mode reads again
        for it in items:  # cheap estimates, before any neighbour search
            it.edges = self._locate_budget(it, properties, None, limit)
        results: list[dict[str, Any]] = [dict() for _ in items]
        for chunk in self._chunks(items, properties, limit):
            graphs = [self._located_graph(it) for it in chunk]
            for it, g in zip(chunk, graphs):  # the actual counts, before the model call
                self._locate_budget(it, properties, g.num_edges, limit)
            batch = batch_graphs(graphs)
            mode = self.memory_mode(batch.num_edges, properties, len(chunk))
            with torch.set_grad_enabled(want_forces or want_stress), self._threads_for(batch):
                if self.committee is None:
                    out = compute(self.model, batch, forces=want_forces, stress=want_stress, memory=mode)
                else:
                    out = self.committee.compute(self.model, batch, want_forces, want_stress, mode,
                                                 force_uncertainty=self.uncertainty == "forces")
            ptr = batch.ptr.tolist()
            energy = out["energy"].detach().cpu().numpy()
            energies = out["energies"].detach().cpu().numpy()
            f = out["forces"].detach().cpu().double().numpy() if want_forces else None
            s = full_3x3_to_voigt_6_stress(out["stress"].detach().cpu().double().numpy()) if want_stress else None
            for b, it in enumerate(chunk):
                r = results[it.index]
                r["energy"] = float(energy[b])
                r["free_energy"] = float(energy[b])
                r["energies"] = energies[ptr[b] : ptr[b + 1]].copy()
                if f is not None:
                    r["forces"] = f[ptr[b] : ptr[b + 1]].copy()
                if s is not None:
                    r["stress"] = s[b].copy()
                if "energy_uncertainty" in out:
                    r["energy_uncertainty"] = float(out["energy_uncertainty"][b])
                    r["energy_committee"] = out["energy_committee"][b].detach().cpu().numpy().copy()
                if "forces_uncertainty" in out:
                    r["forces_uncertainty"] = out["forces_uncertainty"][ptr[b] : ptr[b + 1]].detach().cpu().double().numpy()
        return results

    def _located_graph(self, it: _Item) -> AtomicGraph:
        """The graph of one item; a StructureError names the structure's index in the call."""
        try:
            return self.graph(it.structure, it.neighbors)
        except BudgetError as exc:
            raise type(exc)(f"structure {it.index}: {exc}", exc.estimate, exc.limit, exc.unit) from None
        except StructureError as exc:
            raise StructureError(f"structure {it.index}: {exc}") from None

    def _locate_budget(self, it: _Item, properties: Sequence[str], edges: int | None, limit: int | None) -> int:
        try:
            return self.check_budget(it.structure, properties, edges, limit)
        except BudgetError as exc:  # MemoryBudgetError too
            raise type(exc)(f"structure {it.index}: {exc}", exc.estimate, exc.limit, exc.unit) from None
        except StructureError as exc:  # the estimate's own checks (extent)
            raise StructureError(f"structure {it.index}: {exc}") from None

    @contextlib.contextmanager
    def _threads_for(self, batch: AtomicGraph):
        """The call's threads from ``runtime.call_threads`` (its size and the competition for the
        cores, never more than torch's setting) with ``threads="auto"``; torch's setting otherwise."""
        if self.threads != "auto" or self.device.type != "cpu":
            yield
            return
        with call_threads(batch.num_edges):
            yield

    def _chunks(self, items: list[_Item], properties: Sequence[str] = ("energy", "forces"),
                limit: int | None = None) -> Iterable[list[_Item]]:
        """Consecutive items, cut at ``max_atoms_per_batch`` atoms and at the edge limit (see
        :meth:`edge_limit`; ``limit``: the memory limit in bytes, ``None`` for none)."""
        edge_limit = self.edge_limit(properties, limit)
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
