"""The memory of a model call: the memory model (bytes of one call, and its inverse) and the
budget a :class:`~equiformer_calc.predictor.Predictor` owns (limit, capacity, mode choice, check).

One model, used everywhere memory is charged: the automatic mode choice, the budget check before
any neighbour search, the batching, and the service's edge limits. The OS probes it reads
(/proc/meminfo, cgroups, glibc's heap) live in :mod:`equiformer_calc.runtime`.

Calibration: ``benchmarks/memory.py`` measures the peak RSS increase of one call in a fresh process
(``--sweep``: three presets x float32/float64 x fast/low modes) and compares it with
:meth:`MemoryModel.call_bytes`; ``tests/test_memory.py`` runs a few sizes in fresh processes and
checks that the estimate stays within :data:`ESTIMATE_BAND` of the measured peak.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from . import runtime
from .graph import BudgetError
from .model import EquiformerConfig, resolve_dtype

__all__ = [
    "MEMORY_MODES", "LOW_MEMORY_EDGE_CHUNK", "MEMORY_HEADROOM", "ESTIMATE_BAND", "MemoryBudgetError",
    "resolve_memory_mode", "resolve_limits", "MemoryModel", "MemoryBudget", "bytes_per_edge", "call_bytes", "cut_batches",
]

#: How a model call uses memory. "fast": every per-edge tensor of every block is kept for the
#: backward pass (forces, stress). "low": the per-edge work runs in chunks of
#: :data:`LOW_MEMORY_EDGE_CHUNK` edges under activation checkpointing and is recomputed in the
#: backward pass (``nn/edge_chunks.py``): same numbers to round-off, a fraction of the memory, about
#: one more forward pass of time. "auto": "fast" when its estimate fits the memory limit, else
#: "low" (see :meth:`MemoryBudget.choose_mode`).
MEMORY_MODES = ("auto", "fast", "low")
#: edges per chunk in low-memory mode (benchmarks/memory.py: the chunk's working set is a few
#: hundred MB for the shipped size; smaller chunks save little memory and cost per-chunk overhead)
LOW_MEMORY_EDGE_CHUNK = 8192
#: ``memory_budget="auto"``: a model call may use this fraction of the memory available when it
#: starts (the estimate is of the model call only; Python, the graph and the results need some too)
MEMORY_HEADROOM = 0.8
#: documented accuracy of the memory model: the ratio of its bytes per edge to the measured slope of
#: a call's peak RSS increase over two sizes (``benchmarks/memory.py --sweep``). The constants err on
#: the high side (measured 1.1-1.9, RESULTS.md "Memory per edge"); 0.8 leaves room for the ~25%
#: run-to-run spread of the measurement (allocator state), 2.5 bounds how much the budget wastes
ESTIMATE_BAND = (0.8, 2.5)

# The memory of one call: bytes = edges * bytes_per_edge(mode) + (low mode) one chunk's working
# set, expressed per "width unit" so that it follows the layer sizes: the per-edge width of a block
# is irreps_node + num_heads * irreps_head + sum(fc_neurons) dimensions. Fast mode with forces or
# stress keeps _FAST_FLOATS_PER_WIDTH floats per width unit, edge and block for the backward pass;
# an energy-only fast call about one block's transients (_NOGRAD_FLOATS_PER_WIDTH). Low mode keeps
# the shared edge geometry (_LOW_FLOATS_PER_EDGE + the fixed part) plus one chunk's working set
# (_LOW_CHUNK_FLOATS_PER_WIDTH per width unit and edge of a chunk). Each constant is set above the
# largest measurement of ``benchmarks/memory.py`` (RESULTS.md: "Memory per edge", "Memory per atom
# and low-memory mode", and "Timings formerly in docstrings" for the calibration's numbers).
_FAST_FLOATS_PER_WIDTH = 15.0
_NOGRAD_FLOATS_PER_WIDTH = 7.5
_LOW_FLOATS_PER_EDGE = 200.0
_LOW_CHUNK_FLOATS_PER_WIDTH = 20.0
_LOW_CHUNK_NOGRAD_FLOATS_PER_WIDTH = 6.0
#: per-edge floats of every mode (indices, shifts, vectors, basis, envelope)
_FLOATS_PER_EDGE_FIXED = 64.0

#: properties a call may be charged for; forces or stress need the backward pass
_DEFAULT_PROPERTIES = ("energy", "forces")


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


def resolve_limits(budget: int | str | None, max_edges: int | None) -> tuple[int | str | None, int | None]:
    """Validate a ``memory_budget`` ("auto", None or a positive number of bytes) and ``max_edges``
    (None or positive); returns them normalised (numbers as int). Raises ValueError naming the bad one."""
    bad_number = isinstance(budget, (str, bool)) or not isinstance(budget, numbers.Real) or not budget > 0
    if budget not in ("auto", None) and bad_number:
        raise ValueError(f"memory_budget must be 'auto', None or a positive number of bytes, got {budget!r}")
    if max_edges is not None and (isinstance(max_edges, bool) or not isinstance(max_edges, numbers.Real)
                                  or not max_edges > 0):
        raise ValueError(f"max_edges must be positive or None, got {max_edges!r}")
    return (budget if budget in ("auto", None) else int(budget)), (None if max_edges is None else int(max_edges))


def _needs_grad(properties: Sequence[str]) -> bool:
    return "forces" in properties or "stress" in properties


class MemoryModel:
    """Estimated peak memory (bytes) of one model call for a model ``config`` in ``dtype``, and its
    inverse (the most edges within a number of bytes). ``grad``: forces or stress are computed
    (the backward pass keeps the per-edge tensors); ``memory``: "fast" or "low"."""

    def __init__(self, config: EquiformerConfig, dtype: str | torch.dtype) -> None:
        from e3nn import o3

        self.itemsize = resolve_dtype(dtype).itemsize
        self.num_blocks = int(config.num_blocks)
        self.width = o3.Irreps(config.irreps_node).dim + config.num_heads * o3.Irreps(config.irreps_head).dim + sum(config.fc_neurons)

    def bytes_per_edge(self, grad: bool = True, memory: str = "fast") -> float:
        """Bytes per edge of a call in a concrete mode ("fast" or "low")."""
        if memory not in ("fast", "low"):
            raise ValueError(f"bytes_per_edge needs a concrete mode, 'fast' or 'low', got {memory!r}")
        if memory == "low":
            floats = _LOW_FLOATS_PER_EDGE if grad else 0.0
        elif grad:
            floats = _FAST_FLOATS_PER_WIDTH * self.num_blocks * self.width
        else:
            floats = _NOGRAD_FLOATS_PER_WIDTH * self.width
        return float(self.itemsize * (floats + _FLOATS_PER_EDGE_FIXED))

    def chunk_bytes(self, grad: bool = True) -> float:
        """Working set of one low-mode chunk per edge of the chunk (bytes)."""
        per_width = _LOW_CHUNK_FLOATS_PER_WIDTH if grad else _LOW_CHUNK_NOGRAD_FLOATS_PER_WIDTH
        return float(self.itemsize * per_width * self.width)

    def call_bytes(self, edges: int, grad: bool = True, memory: str = "fast") -> float:
        """Peak bytes of one call on ``edges`` edges (exact, or estimated before the search):
        ``edges * bytes_per_edge`` plus, in low mode, one chunk of :data:`LOW_MEMORY_EDGE_CHUNK` edges."""
        total = edges * self.bytes_per_edge(grad, memory)
        if memory == "low":
            total += min(int(edges), LOW_MEMORY_EDGE_CHUNK) * self.chunk_bytes(grad)
        return float(total)

    def call_edges(self, limit: float, grad: bool = True, memory: str = "fast") -> int:
        """The most edges one call may have within ``limit`` bytes (the inverse of :meth:`call_bytes`)."""
        per_edge = self.bytes_per_edge(grad, memory)
        if memory == "fast":
            return max(int(limit // per_edge), 0)
        chunk = self.chunk_bytes(grad)
        if limit <= LOW_MEMORY_EDGE_CHUNK * (per_edge + chunk):  # within one chunk
            return max(int(limit // (per_edge + chunk)), 0)
        return int((limit - LOW_MEMORY_EDGE_CHUNK * chunk) // per_edge)


def bytes_per_edge(config: EquiformerConfig, dtype: str | torch.dtype, grad: bool = True, memory: str = "fast") -> float:
    """:meth:`MemoryModel.bytes_per_edge` of a model config in ``dtype``."""
    return MemoryModel(config, dtype).bytes_per_edge(grad, memory)


def call_bytes(config: EquiformerConfig, dtype: str | torch.dtype, edges: int, grad: bool = True, memory: str = "fast") -> float:
    """:meth:`MemoryModel.call_bytes` of a model config in ``dtype``."""
    return MemoryModel(config, dtype).call_bytes(edges, grad, memory)


@dataclass
class MemoryBudget:
    """The memory rules of one predictor: its :class:`MemoryModel`, the mode (one of
    :data:`MEMORY_MODES`), the limit of one call (``budget``: bytes, ``"auto"`` =
    :data:`MEMORY_HEADROOM` of the memory available on ``device`` when the call starts, or ``None``:
    no limit), and an optional cap on the edges of one structure (``max_edges``)."""

    model: MemoryModel
    mode: str = "auto"
    budget: int | str | None = "auto"
    max_edges: int | None = None
    device: torch.device = torch.device("cpu")

    def __post_init__(self) -> None:
        resolve_memory_mode(self.mode)
        self.budget, self.max_edges = resolve_limits(self.budget, self.max_edges)
        self.device = torch.device(self.device)

    def estimate_bytes(self, edges: int, properties: Sequence[str] = _DEFAULT_PROPERTIES, memory: str = "fast") -> float:
        """Peak bytes of one call on ``edges`` edges for ``properties`` in mode ``memory``."""
        return self.model.call_bytes(int(edges), _needs_grad(properties), memory)

    def call_edges(self, limit: float, properties: Sequence[str] = _DEFAULT_PROPERTIES, memory: str = "fast") -> int:
        """The most edges one call for ``properties`` in mode ``memory`` may have within ``limit`` bytes."""
        return self.model.call_edges(limit, _needs_grad(properties), memory)

    @property
    def leanest_mode(self) -> str:
        """The mode that needs the least memory among those ``mode`` allows."""
        return "fast" if self.mode == "fast" else "low"

    def limit(self) -> int | None:
        """Bytes one call may use now: ``budget`` when it is a number; for "auto"
        :data:`MEMORY_HEADROOM` of the memory available now (``None``: no limit, or unknown)."""
        if self.budget != "auto":
            return self.budget  # type: ignore[return-value]
        avail = runtime.available_memory(self.device)
        return None if avail is None else int(MEMORY_HEADROOM * avail)

    def capacity(self) -> int | None:
        """The most memory a call may ever get: ``budget`` when it is a number, for "auto"
        :data:`MEMORY_HEADROOM` of all the device's memory (``None``: unlimited or unknown). A
        structure over it can never be evaluated here (the service's 413 edge limits); one within
        it may still not fit what is available now (507)."""
        if self.budget != "auto":
            return self.budget  # type: ignore[return-value]
        total = runtime.total_memory(self.device)
        return None if total is None else int(MEMORY_HEADROOM * total)

    def edge_limit(self, properties: Sequence[str] = _DEFAULT_PROPERTIES, limit: int | str | None = "now") -> int | None:
        """The most edges one batched call may have: ``max_edges``, and what fits in ``limit`` bytes
        (``"now"``: :meth:`limit`; ``None``: no memory limit) in "fast" mode ("low" when the mode is
        "low"), whichever is smaller (``None``: unlimited)."""
        if limit == "now":
            limit = self.limit()
        limits = [] if self.max_edges is None else [self.max_edges]
        if limit is not None:
            limits.append(self.call_edges(limit, properties, "low" if self.mode == "low" else "fast"))  # type: ignore[arg-type]
        return min(limits) if limits else None

    def error(self, what: str, edges: int, exact: bool, properties: Sequence[str], mode: str, need: float,
              limit: int, cutoff: float) -> MemoryBudgetError:
        """The :class:`MemoryBudgetError` of a call on ``edges`` edges that needs ``need`` bytes."""
        hint = " (or memory='low')" if mode == "fast" else ""
        if self.budget == "auto":
            over = f"over the {limit / 2**30:.3g} GiB a call may use now ({MEMORY_HEADROOM:.0%} of the available memory)"
        else:
            over = f"over the memory budget of {limit / 2**30:.3g} GiB"
        return MemoryBudgetError(
            f"{what} with the model's {cutoff:g} A cutoff make {'exactly' if exact else 'about'} {edges:,} edges; "
            f"evaluating {', '.join(properties)} in memory='{mode}' mode would need about {need / 2**30:.3g} GiB, "
            f"{over}; use a smaller structure{hint}, or free memory",
            estimate=need, limit=limit,
        )

    def check(self, atoms: int, edges: int, exact: bool, cutoff: float,
              properties: Sequence[str] = _DEFAULT_PROPERTIES, limit: int | str | None = "now") -> int:
        """``edges`` of one structure of ``atoms`` atoms; raises :class:`BudgetError` over
        ``max_edges`` and :class:`MemoryBudgetError` when the call would not fit ``limit`` bytes
        (``"now"``: :meth:`limit`) even in the leanest mode allowed."""
        if self.max_edges is not None and edges > self.max_edges:
            raise BudgetError(
                f"{atoms} atoms with the model's {cutoff:g} A cutoff make {'exactly' if exact else 'about'} "
                f"{edges:,} edges, over the limit of {self.max_edges:,} edges per structure",
                estimate=edges, limit=self.max_edges, unit="edges",
            )
        if limit == "now":
            limit = self.limit()
        if limit is not None:
            mode = self.leanest_mode
            need = self.estimate_bytes(edges, properties, mode)
            if need > limit:  # type: ignore[operator]
                raise self.error(f"{atoms} atoms", edges, exact, properties, mode, need, int(limit), cutoff)  # type: ignore[arg-type]
        return edges

    def choose_mode(self, edges: int, cutoff: float, properties: Sequence[str] = _DEFAULT_PROPERTIES,
                    structures: int = 1) -> str:
        """The mode ("fast" or "low") of a call on ``edges`` (exact) edges: the configured one, or for
        "auto" "fast" when its estimate fits :meth:`limit` and "low" otherwise. Raises
        :class:`MemoryBudgetError` when the call does not fit in the chosen mode."""
        limit = self.limit()
        mode = self.mode
        if mode == "auto":
            fits_fast = limit is None or self.estimate_bytes(edges, properties, "fast") <= limit
            mode = "fast" if fits_fast else "low"
        need = self.estimate_bytes(edges, properties, mode)
        if limit is not None and need > limit:
            what = f"{structures} structures" if structures > 1 else "a structure"
            raise self.error(what, edges, True, properties, mode, need, limit, cutoff)
        return mode


def cut_batches(atoms: Sequence[int], edges: Sequence[int], max_atoms: int,
                edge_limit: int | None) -> Iterator[list[int]]:
    """Indices of consecutive structures (``atoms[k]`` atoms, ``edges[k]`` edges each), cut before a
    batch would pass ``max_atoms`` atoms or ``edge_limit`` edges (``None``: no edge limit); a structure
    over either limit alone is a batch of its own (the predictor's batching)."""
    chunk: list[int] = []
    n_atoms = n_edges = 0
    for k, (n, e) in enumerate(zip(atoms, edges)):
        over_edges = edge_limit is not None and n_edges + e > edge_limit
        if chunk and (n_atoms + n > max_atoms or over_edges):
            yield chunk
            chunk, n_atoms, n_edges = [], 0, 0
        chunk.append(k)
        n_atoms += n
        n_edges += e
    if chunk:
        yield chunk
