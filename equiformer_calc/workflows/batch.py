"""Many relaxations at once, with one batched model call per optimizer step.

:func:`relax_batch` runs one unmodified ASE optimizer per structure (the same set-up as
:func:`~equiformer_calc.workflows.relax.relax`). Each optimizer runs in its own thread and its
structure's calculator is a stand-in that, instead of evaluating the model, posts the structure
to a rendezvous and waits. When every still-running optimizer is waiting, the calling thread
evaluates all of their structures in ONE ``Predictor.predict`` call and hands each optimizer its
energy and forces. Optimizers that converge (or run out of steps) leave, so the batch shrinks as
the relaxations finish. The threads only run ASE's cheap optimizer arithmetic; the model runs in
the calling thread. Every optimizer therefore takes exactly the steps it would take alone: final
energies equal one-by-one :func:`relax` calls up to the rounding of batched evaluation.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ..io import progress as tqdm  # live bar on a terminal, plain lines in a log

from ..graph import NeighborListCache
from ..predictor import Predictor
from ._common import check_number, resolve_calculator
from .relax import RelaxResult, _Relaxation, prepare_relaxation

__all__ = ["relax_batch", "RelaxChunk", "relax_chunk"]

log = logging.getLogger(__name__)


class _Aborted(Exception):
    """Raised in optimizer threads when the batch is being shut down."""


class _Exchange:
    """Rendezvous between the optimizer threads (which post structures and wait) and the thread
    that evaluates the model (which waits until every running optimizer has posted)."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.pending: dict[int, Atoms] = {}
        self.answers: dict[int, dict[str, Any] | BaseException] = {}
        self.running = 0
        self.finished: list[int] = []
        self.aborted = False

    # optimizer-thread side
    def evaluate(self, index: int, atoms: Atoms) -> dict[str, Any]:
        with self.cv:
            if self.aborted:
                raise _Aborted()
            self.pending[index] = atoms
            self.cv.notify_all()
            while index not in self.answers and not self.aborted:
                self.cv.wait()
            if self.aborted:
                raise _Aborted()
            answer = self.answers.pop(index)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def started(self) -> None:
        with self.cv:
            self.running += 1

    def done(self, index: int) -> None:
        with self.cv:
            self.running -= 1
            self.finished.append(index)
            self.cv.notify_all()

    # model-thread side
    def wait_for_requests(self) -> tuple[dict[int, Atoms], list[int], bool]:
        """Block until every running optimizer waits for results (or none runs, or one finished).
        Returns the posted structures, the optimizers that finished meanwhile, and whether none
        is running any more (all three read under the same lock)."""
        with self.cv:
            while self.running > 0 and len(self.pending) < self.running and not self.finished:
                self.cv.wait()
            finished, self.finished = self.finished, []
            idle = self.running == 0
            if len(self.pending) < self.running:  # woken by a finish: serve nobody yet
                return {}, finished, idle
            batch, self.pending = self.pending, {}
            return batch, finished, idle

    def answer(self, answers: dict[int, dict[str, Any] | BaseException]) -> None:
        with self.cv:
            self.answers.update(answers)
            self.cv.notify_all()

    def abort(self) -> None:
        with self.cv:
            self.aborted = True
            self.cv.notify_all()


class _ServedCalculator(Calculator):
    """Calculator of one structure of the batch: results come from the shared batched call."""

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, exchange: _Exchange, index: int) -> None:
        super().__init__()
        self.exchange = exchange
        self.index = index

    def calculate(
        self, atoms: Atoms | None = None, properties: Sequence[str] = ("energy",), system_changes: Sequence[str] = all_changes
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        assert self.atoms is not None
        self.results = self.exchange.evaluate(self.index, self.atoms)


def _predictor_of(calculator: Any) -> Predictor:
    predictor = getattr(calculator, "predictor", None)
    if isinstance(predictor, Predictor):
        d3 = getattr(calculator, "dispersion_term", None)
        if d3 is not None:  # the calculator adds D3: so must the batched calls
            from ..integrations.d3 import DispersionPredictor

            return DispersionPredictor(predictor, d3)  # type: ignore[return-value]
        return predictor
    raise TypeError(
        "relax_batch needs an EquiformerCalculator (or a Predictor) to batch model calls, "
        f"got {type(calculator).__name__}"
    )


def relax_batch(
    structures: Sequence[Atoms],
    fmax: float = 0.05,
    steps: int = 500,
    optimizer: str = "FIRE",
    calculator: Any = None,
    fix_bottom: int | None = None,
    fix_below: float | None = None,
    cell: bool = False,
    max_concurrent: int = 512,
    callback: Callable[[int, RelaxResult], None] | None = None,
    progress: bool = True,
    optimizer_kwargs: dict[str, Any] | None = None,
    invalid: str = "raise",
) -> list[RelaxResult]:
    """Relax every structure (copies; inputs untouched) concurrently with one batched model call
    per optimizer step for all still-unconverged structures. Returns one :class:`RelaxResult`
    per input, in order.

    The arguments mean what they mean for :func:`~equiformer_calc.workflows.relax.relax`
    (``optimizer`` "FIRE", "BFGS" or "LBFGS"; constraints already on the structures are kept and
    ``fix_bottom`` / ``fix_below`` add to them). ``calculator``: the model as in
    :func:`~equiformer_calc.workflows.relax.relax`, but it must batch model calls (an
    EquiformerCalculator, a Predictor, a ModelSettings or a checkpoint name; None: the default
    checkpoint). A calculator ``skin`` > 0 (``ModelSettings(skin=...)``) keeps one neighbour-list
    cache per structure (same results, fewer neighbour searches).
    ``max_concurrent`` bounds the number of structures in flight (and of threads); the next
    structure starts as one finishes. ``callback(index, result)`` runs in the calling thread as
    soon as a structure is done (to save results incrementally); an exception it raises stops
    the whole batch and propagates. A structure whose evaluation fails (for example atoms
    collapsing onto each other) stops with ``result.error`` set; the others go on.
    ``invalid``: what an input the model cannot take (unknown element, bad cell...) does:
    ``"raise"`` (the default) stops before anything runs, naming the structure; ``"record"``
    gives that structure a result with ``error`` set (no step taken; ``callback`` is called for
    it first) and relaxes the others exactly as if it were absent.
    """
    check_number("fmax", fmax, gt=0)
    check_number("steps", steps, ge=0, integer=True)
    check_number("max_concurrent", max_concurrent, ge=1, integer=True)
    structures = list(structures)
    if not structures:
        return []
    calc = resolve_calculator(calculator)
    predictor = _predictor_of(calc)
    skin = float(getattr(calc, "parameters", {}).get("skin", 0.0))
    if invalid not in ("raise", "record"):
        raise ValueError(f"invalid must be 'raise' or 'record', got {invalid!r}")
    rejected = _rejected_inputs(predictor, structures, cell, invalid)
    run = _BatchRun(
        predictor, structures, dict(optimizer=optimizer, fix_bottom=fix_bottom, fix_below=fix_below, cell=cell,
                                    optimizer_kwargs=optimizer_kwargs),
        fmax, steps, [NeighborListCache(skin) if skin > 0 else None for _ in structures], callback,
    )
    for k, error in rejected.items():
        run.record_rejected(k, error)
    run.queue = [k for k in range(len(structures)) if k not in rejected][::-1]
    if run.queue:
        run.loop(max_concurrent, progress)
    return [run.results[k] for k in range(len(structures))]


def _rejected_inputs(predictor: Predictor, structures: list[Atoms], cell: bool, invalid: str) -> dict[int, str]:
    """Set-up phase: every input the model cannot take, by index (``invalid="raise"``: the first one
    raises, naming its index), checked before anything runs."""
    rejected: dict[int, str] = {}
    for k, atoms in enumerate(structures):
        try:
            predictor.to_structure(atoms)
            if cell and not atoms.pbc.all():
                raise ValueError(f"cell relaxation needs 3D periodicity (pbc={atoms.pbc.tolist()})")
        except ValueError as exc:
            if invalid == "raise":
                raise type(exc)(f"structure {k}: {exc}") from None
            rejected[k] = f"{type(exc).__name__}: {exc}"
            log.warning("structure %d not relaxed: %s", k, rejected[k])
    return rejected


class _BatchRun:
    """The state of one :func:`relax_batch` call: one optimizer thread per structure in flight,
    each asking :class:`_Exchange` for its energies and forces; the loop answers all pending
    requests with one batched model call (:meth:`evaluate`), starts the next structure as one
    finishes and hands finished results to ``callback``."""

    def __init__(self, predictor: Predictor, structures: list[Atoms], settings: dict[str, Any], fmax: float,
                 steps: int, caches: list[NeighborListCache | None],
                 callback: Callable[[int, RelaxResult], None] | None) -> None:
        self.predictor = predictor
        self.structures = structures
        self.settings = settings
        self.fmax, self.steps = fmax, steps
        self.caches = caches
        self.callback = callback
        self.properties = ("energy", "forces", "energies") + (("stress",) if settings["cell"] else ())
        self.exchange = _Exchange()
        self.jobs: dict[int, _Relaxation] = {}
        self.results: dict[int, RelaxResult] = {}
        self.threads: dict[int, threading.Thread] = {}
        self.queue: list[int] = []

    def record_rejected(self, index: int, error: str) -> None:
        atoms = self.structures[index].copy()
        atoms.calc = None
        self.results[index] = RelaxResult(atoms, error=error)
        if self.callback is not None:
            self.callback(index, self.results[index])

    def _work(self, index: int, job: _Relaxation) -> None:
        """One structure's optimizer, in its own thread."""
        try:
            converged = job.optimizer.run(fmax=self.fmax, steps=self.steps)
            self.results[index] = job.result(bool(converged))
        except _Aborted:
            pass
        except Exception as exc:  # noqa: BLE001 - recorded on the structure's result
            log.warning("structure %d stopped: %s: %s", index, type(exc).__name__, exc)
            self.results[index] = job.result(False, error=f"{type(exc).__name__}: {exc}")
        finally:
            self.exchange.done(index)

    def start_next(self) -> None:
        index = self.queue.pop()
        s = self.settings
        job = prepare_relaxation(
            self.structures[index], _ServedCalculator(self.exchange, index), s["optimizer"], s["fix_bottom"],
            s["fix_below"], s["cell"], optimizer_kwargs=s["optimizer_kwargs"],
        )
        self.jobs[index] = job
        self.exchange.started()
        thread = threading.Thread(target=self._work, args=(index, job), name=f"relax_batch-{index}", daemon=True)
        self.threads[index] = thread
        thread.start()

    def evaluate(self, batch: dict[int, Atoms]) -> dict[int, dict[str, Any] | BaseException]:
        """One batched model call for all pending requests; when it fails, one call per structure
        finds the culprit(s) and serves the others."""
        order = sorted(batch)
        predict = self.predictor.predict
        try:
            out = predict([batch[k] for k in order], properties=self.properties,
                          neighbor_caches=[self.caches[k] for k in order])
            return dict(zip(order, out))
        except Exception:  # noqa: BLE001 - find the culprit(s), serve the others
            answers: dict[int, dict[str, Any] | BaseException] = {}
            for k in order:
                try:
                    answers[k] = predict([batch[k]], properties=self.properties, neighbor_caches=[self.caches[k]])[0]
                except Exception as exc:  # noqa: BLE001
                    answers[k] = exc
            return answers

    def _finish(self, index: int, bar: Any) -> bool:
        """Book-keeping of a finished structure; True when another one was started in its place."""
        self.threads.pop(index).join()
        self.jobs.pop(index).close()
        bar.update(1)
        if self.callback is not None and index in self.results:
            self.callback(index, self.results[index])
        if self.queue:
            self.start_next()
            return True
        return False

    def loop(self, max_concurrent: int, progress: bool) -> None:
        """Run until every queued structure is done (threads joined and closed even on an error)."""
        bar = tqdm(total=len(self.queue), desc="relax_batch", unit="structure", disable=not progress, leave=False)
        rounds = 0
        try:
            while self.queue and self.exchange.running < max_concurrent:
                self.start_next()
            while True:
                batch, finished, idle = self.exchange.wait_for_requests()
                started = False
                for index in finished:
                    started = self._finish(index, bar) or started
                if batch:
                    self.exchange.answer(self.evaluate(batch))
                    rounds += 1
                    bar.set_postfix(step=rounds, active=len(batch), refresh=False)
                elif idle and not started and not self.queue:  # nobody ran when `finished` was read, nobody started since
                    break
        finally:
            self.exchange.abort()
            for thread in self.threads.values():
                thread.join()
            for job in self.jobs.values():
                job.close()
            bar.close()
        log.debug("relax_batch: %d structures, %d batched model calls", len(self.structures), rounds)


@dataclass
class RelaxChunk:
    """One fan-out task (see :mod:`equiformer_calc.distributed`): structures relaxed together by
    :func:`relax_chunk` on the model registered as ``model`` (an executor's model key), with the
    :func:`relax_batch` settings below."""

    model: str
    structures: list[Atoms]
    fmax: float = 0.05
    steps: int = 500
    optimizer: str = "FIRE"
    fix_bottom: int | None = None
    max_concurrent: int = 512
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)


def relax_chunk(chunk: RelaxChunk) -> list[RelaxResult]:
    """Run one :class:`RelaxChunk` where it lands (in-process or on a Dask worker): one
    :func:`relax_batch` call with the worker's model, invalid structures recorded as failed
    results instead of stopping the chunk."""
    from ..distributed import worker_model

    return relax_batch(
        chunk.structures, fmax=chunk.fmax, steps=chunk.steps, optimizer=chunk.optimizer,
        calculator=worker_model(chunk.model), fix_bottom=chunk.fix_bottom, max_concurrent=chunk.max_concurrent,
        progress=False, optimizer_kwargs=chunk.optimizer_kwargs or None, invalid="record",
    )
