"""The one place that runs the model: graphs -> forward -> autograd forces and stress.

Everything that evaluates energies (the ASE calculator, batched relaxations, the HTTP service, the
trainer's loss) calls :func:`compute` (differentiable, torch in / torch out) or
:class:`Predictor` (structures in, numpy results out, batched by an atom budget).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import weakref
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from .autograd import compute, unbatch, voigt
from .graph import (
    DEFAULT_MIN_DISTANCE_RATIO,
    AtomicGraph,
    BudgetError,
    LocalFrame,
    NeighborListCache,
    Structure,
    StructureError,
    batch_graphs,
    build_graph,
    estimate_edges,
    local_frame,
    structure_from_atoms,
)
from .memory import (
    LOW_MEMORY_EDGE_CHUNK,
    MEMORY_HEADROOM,
    MEMORY_MODES,
    MemoryBudget,
    MemoryBudgetError,
    MemoryModel,
    bytes_per_edge,
    call_bytes,
    cut_batches,
    resolve_memory_mode,
)
from .model import Equiformer, NotAPotentialError, UnknownElementError, model_task, not_a_potential_message, resolve_dtype
from .runtime import available_memory, call_threads, check_device, configure_runtime, total_memory

# re-exported names (their homes: autograd, model, memory, runtime) keep `from equiformer_calc.predictor import X` working
__all__ = [
    "compute", "Predictor", "ALL_PROPERTIES", "NotAPotentialError", "model_task", "not_a_potential_message",
    "resolve_dtype", "voigt", "MEMORY_MODES", "LOW_MEMORY_EDGE_CHUNK", "MEMORY_HEADROOM", "MemoryBudgetError",
    "resolve_memory_mode", "bytes_per_edge", "call_bytes", "available_memory", "total_memory",
]

log = logging.getLogger(__name__)

#: properties a prediction can return (ASE names and units: eV, eV/A, eV/A^3)
ALL_PROPERTIES = ("energy", "free_energy", "energies", "forces", "stress")


#: models that belong to a predictor (converted in place by it): a second owner is refused
_HANDED_OVER: "weakref.WeakSet[Equiformer]" = weakref.WeakSet()


@contextlib.contextmanager
def _naming(index: int) -> Iterator[None]:
    """Re-raise a :class:`~equiformer_calc.graph.BudgetError` or :class:`StructureError` naming structure ``index``."""
    try:
        yield
    except BudgetError as exc:
        raise type(exc)(f"structure {index}: {exc}", exc.estimate, exc.limit, exc.unit) from None
    except StructureError as exc:
        raise StructureError(f"structure {index}: {exc}") from None


@dataclass
class _Item:
    index: int
    structure: Structure
    graph: AtomicGraph | None = None
    neighbors: NeighborListCache | None = None
    edges: int = 0
    frame: LocalFrame | None = None


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

    Memory: ``memory`` (one of :data:`MEMORY_MODES`), ``memory_budget`` (bytes, ``"auto"``:
    :data:`MEMORY_HEADROOM` of the memory available when a call starts, or ``None``) and
    ``max_edges`` make the predictor's :class:`~equiformer_calc.memory.MemoryBudget` (``budget``):
    every structure's edge count is estimated before any neighbour search and checked against it
    (:class:`~equiformer_calc.graph.BudgetError` over ``max_edges``, :class:`MemoryBudgetError`
    when even the leanest mode does not fit), again with the exact count after the search; batches
    are cut so that every call fits, and "auto" runs a call "fast" when it fits, else "low".

    Threads: with ``threads="auto"`` (default) each call runs on the threads of the measured policy
    :func:`~equiformer_calc.runtime.thread_policy`, never more than torch is set to
    (``torch.set_num_threads``): all of them on a quiet machine, one fewer for each core that other
    processes keep busy (measured since the previous call); ``None`` leaves torch's setting alone.

    The model: the predictor never changes the module it is given. It works on its own copy,
    converted to ``device`` and ``dtype``, in eval mode, with frozen parameters (the copy's time:
    ``benchmarks/predictor_copy.py``). ``copy_model=False`` hands
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
        budget = dict(mode=resolve_memory_mode(memory), budget=memory_budget, max_edges=max_edges, device=device)
        if not min_distance_ratio >= 0:
            raise ValueError(f"min_distance_ratio must be >= 0, got {min_distance_ratio}")
        self.min_distance_ratio = float(min_distance_ratio)
        self.device = check_device(device)  # a device this machine lacks: a clear error now, not in the first call
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
        #: the memory rules of every call (:class:`~equiformer_calc.memory.MemoryBudget`)
        self.budget = MemoryBudget(MemoryModel(self.model.config, self.dtype), **budget)
        #: a :class:`~equiformer_calc.committee.HeadCommittee` (set by :meth:`set_committee`): adds
        #: ``energy_uncertainty`` / ``energy_committee`` (and ``forces_uncertainty``) to every result
        self.committee: Any = None
        self.uncertainty = "off"

    def set_committee(self, committee: Any, uncertainty: str = "energy") -> None:
        """Attach a :class:`~equiformer_calc.committee.HeadCommittee` (None detaches it);
        ``uncertainty`` "energy", "forces" or "off" (see :data:`~equiformer_calc.committee.UNCERTAINTY_MODES`)."""
        if uncertainty not in ("off", "energy", "forces"):
            raise ValueError(f"uncertainty must be 'off', 'energy' or 'forces', got {uncertainty!r}")
        self.committee = None if committee is None or uncertainty == "off" else committee.to(self.device, self.dtype)
        self.uncertainty = uncertainty if self.committee is not None else "off"

    @property
    def cutoff(self) -> float:
        return self.model.cutoff

    @property
    def elements(self) -> list[str]:
        return self.model.elements

    # ------------------------------------------------------------------------------ memory
    # The memory rules live in self.budget (memory.MemoryBudget); these name them on the predictor.
    @property
    def memory(self) -> str:
        """The memory mode (one of :data:`MEMORY_MODES`)."""
        return self.budget.mode

    @memory.setter
    def memory(self, value: str) -> None:
        self.budget.mode = resolve_memory_mode(value)

    @property
    def memory_budget(self) -> int | str | None:
        """The limit of one call: bytes, "auto" or None (see :class:`~equiformer_calc.memory.MemoryBudget`)."""
        return self.budget.budget

    @memory_budget.setter
    def memory_budget(self, value: int | str | None) -> None:
        self.budget.budget = value
        self.budget.__post_init__()

    @property
    def max_edges(self) -> int | None:
        return self.budget.max_edges

    @property
    def leanest_mode(self) -> str:
        return self.budget.leanest_mode

    def bytes_per_edge(self, properties: Sequence[str] = ("energy", "forces"), memory: str = "fast") -> float:
        """Estimated bytes per edge of a call for ``properties`` in mode ``memory`` ("fast" or "low")."""
        return self.budget.model.bytes_per_edge("forces" in properties or "stress" in properties, memory)

    def estimate_bytes(self, edges: int, properties: Sequence[str] = ("energy", "forces"), memory: str = "fast") -> float:
        return self.budget.estimate_bytes(edges, properties, memory)

    def call_edges(self, limit: float, properties: Sequence[str] = ("energy", "forces"), memory: str = "fast") -> int:
        return self.budget.call_edges(limit, properties, memory)

    def memory_limit(self) -> int | None:
        return self.budget.limit()

    def memory_capacity(self) -> int | None:
        return self.budget.capacity()

    def edge_limit(self, properties: Sequence[str] = ("energy", "forces"), limit: int | str | None = "now") -> int | None:
        return self.budget.edge_limit(properties, limit)

    def check_budget(self, structure: Structure, properties: Sequence[str] = ("energy", "forces"),
                     edges: int | None = None, limit: int | str | None = "now", frame: LocalFrame | None = None) -> int:
        """The edge count of one structure (``edges`` if known, else the estimate: no neighbour
        search; ``frame``: its local frame when known); raises :class:`~equiformer_calc.graph.BudgetError`
        over ``max_edges`` and :class:`MemoryBudgetError` when its call would not fit ``limit`` bytes
        (default ``"now"``: :meth:`memory_limit`) even in the leanest mode allowed."""
        exact = edges is not None
        if edges is None:
            edges = estimate_edges(structure, self.cutoff, frame)
        return self.budget.check(len(structure), edges, exact, self.cutoff, properties, limit)

    def memory_mode(self, edges: int, properties: Sequence[str] = ("energy", "forces"), structures: int = 1) -> str:
        """The mode ("fast" or "low") of a call on ``edges`` edges (see :meth:`MemoryBudget.choose_mode`)."""
        return self.budget.choose_mode(edges, self.cutoff, properties, structures)

    def to_structure(self, item: Any) -> Structure:
        """Validate one input (Atoms or Structure), including its elements."""
        structure = item if isinstance(item, Structure) else structure_from_atoms(item)
        self.model.species_index(torch.from_numpy(structure.numbers))  # raises UnknownElementError
        return structure

    def graph(self, structure: Structure, neighbors: NeighborListCache | None = None,
              frame: LocalFrame | None = None) -> AtomicGraph:
        """The radius graph of one structure on the model's device, positions in float64 (``neighbors``:
        a skin cache for this structure, see :class:`~equiformer_calc.graph.NeighborListCache`;
        ``frame``: its local frame when already computed)."""
        graph = build_graph(
            structure, self.cutoff, dtype=torch.float64, neighbors=neighbors, min_distance_ratio=self.min_distance_ratio,
            frame=frame,
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
            for b, (it, r) in enumerate(zip(chunk, unbatch(out, ptr, want_forces, want_stress))):
                if self.committee is not None:
                    r.update(self.committee.unbatch(out, b, ptr[b], ptr[b + 1]))
                results[it.index] = r
        return results

    def _located_graph(self, it: _Item) -> AtomicGraph:
        """The graph of one item; a StructureError names the structure's index in the call."""
        with _naming(it.index):
            return self.graph(it.structure, it.neighbors, it.frame)

    def _locate_budget(self, it: _Item, properties: Sequence[str], edges: int | None, limit: int | None) -> int:
        """The budget check of one item (:meth:`check_budget`); its errors name the structure's index."""
        with _naming(it.index):  # BudgetError (MemoryBudgetError too), and the estimate's own checks (extent)
            if it.frame is None:  # framed once: the estimate, the search and the graph share it
                it.frame = local_frame(it.structure)
            return self.check_budget(it.structure, properties, edges, limit, it.frame)

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
        cuts = cut_batches([len(it.structure) for it in items], [it.edges for it in items],
                           self.max_atoms_per_batch, self.edge_limit(properties, limit))
        return ([items[k] for k in ks] for ks in cuts)
