"""Relax on an expensive reference calculator with few calls, steered by the model (a corrected surrogate).

A reference relaxation (DFT, or the teacher) costs one reference call per optimiser step, and BFGS spends
several of them learning a curvature the model already knows. :class:`SurrogateOptimizer` spends model calls
instead: at the current point ``x_k`` the reference gives E_ref and F_ref; the surrogate

    E_s(x) = E_model(x) + [E_ref(x_k) - E_model(x_k)] - [F_ref(x_k) - F_model(x_k)] . (x - x_k)

agrees with the reference in energy and forces at ``x_k`` (a first-order correction of the model), plus
``1/2 (x - x_k)^T D (x - x_k)``, where ``D`` learns the difference of the two Hessians from the steps taken
(symmetric rank-one updates from the reference's and the model's gradient changes along every step, rejected
ones included), and is relaxed with the model alone (BFGS, to ``inner_fmax``; stopped early once it has left
the trust region, where its step would be cut anyway). Its minimum, cut to a trust radius (the largest
displacement of any atom), is the next point; the reference is called there. A step that raises the
reference energy is rejected (the radius halves and the step is redone from the best point); one whose
energy change agrees with the surrogate's prediction doubles the radius (up to ``max_trust``). A fixed point
is a point where the reference forces vanish: convergence is judged on the reference's own forces (``fmax``,
constraints applied), exactly as a BFGS run on the reference judges it. When the surrogate cannot make progress
(radius below ``min_trust``) the relaxation continues with plain BFGS on the reference, from the best point.

A run killed part-way (a DFT job lost with its node) resumes exactly: the path depends on the model's
arithmetic, which may differ in its last bits on another machine, thread count or worker, so it is not
recomputed. ``replay`` hands the optimiser the positions of an earlier run's reference calls, in order (a
journal's :meth:`~equiformer_calc.data.labellers.LabelJournal.positions`); each step takes the next of them
instead of the surrogate's proposal, as long as there are any, and the labeller's journal answers them
without a call. New proposals start where the earlier run stopped.

So every reference call is a step, and a model close to the reference makes each step a near-Newton step:
the final structure is a reference minimum (to ``fmax``), whichever model steered. What it costs is model
calls (about ten per reference call in ``benchmarks/refine.py``'s systems), which are cheap next to DFT.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

__all__ = ["SurrogateOptimizer", "CorrectedCalculator"]

log = logging.getLogger(__name__)


class CorrectedCalculator(Calculator):
    """``model`` plus the correction that makes it agree with a reference at ``x0``: E = E_model + ``de`` -
    sum(``df`` * (x - ``x0``)) + 1/2 d^T ``hessian`` d (d = x - ``x0`` flattened), F = F_model + ``df`` -
    ``hessian`` d (``df``: reference minus model forces at ``x0``, shape (N, 3); ``hessian``: (3N, 3N), the
    reference's Hessian minus the model's, as far as it is known; None: zero)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, model: Calculator, x0: np.ndarray, de: float, df: np.ndarray,
                 hessian: np.ndarray | None = None) -> None:
        super().__init__()
        self.model = model
        self.x0 = np.array(x0, dtype=float)
        self.de = float(de)
        self.df = np.array(df, dtype=float)
        self.hessian = None if hessian is None else np.array(hessian, dtype=float)

    def calculate(self, atoms: Atoms | None = None, properties: Any = ("energy",), system_changes: Any = all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        probe = self.atoms.copy()
        probe.set_constraint()
        probe.calc = self.model
        e = float(probe.get_potential_energy())
        f = np.asarray(probe.get_forces(), dtype=float)
        d = self.atoms.positions - self.x0
        e = e + self.de - float(np.sum(self.df * d))
        f = f + self.df
        if self.hessian is not None:
            hd = self.hessian @ d.ravel()
            e += 0.5 * float(d.ravel() @ hd)
            f = f - hd.reshape(-1, 3)
        self.results = {"energy": e, "forces": f}


class SurrogateOptimizer:
    """Relax ``atoms`` (its calculator is the reference) steered by the ``surrogate`` calculator (the model);
    see the module docstring. ASE's optimiser interface: ``run(fmax, steps) -> converged``, ``nsteps``
    (reference calls after the first). ``trust`` / ``max_trust`` / ``min_trust``: the step's largest atomic
    displacement (A); ``inner_fmax`` (default ``fmax / 3``) and ``inner_steps``: the surrogate's relaxation;
    ``learn_curvature``: add the learnt Hessian difference (off: the first-order correction alone, which took
    1.6x the reference calls in the benchmark of ``benchmarks/refine.py``'s systems); ``replay``: the
    positions of an earlier, interrupted run's reference calls from the same start, in order (see the module
    docstring; ignored, with a warning, when its first entry is not the start).
    After ``run`` the atoms are at the lowest-energy point the reference evaluated, with its results."""

    def __init__(self, atoms: Atoms, surrogate: Calculator, trust: float = 0.2, max_trust: float = 0.5,
                 min_trust: float = 0.01, inner_fmax: float | None = None, inner_steps: int = 300,
                 learn_curvature: bool = True, replay: Sequence[np.ndarray] = ()) -> None:
        if atoms.calc is None:
            raise ValueError("SurrogateOptimizer: the atoms need a calculator (the reference)")
        if not 0 < min_trust <= trust <= max_trust:
            raise ValueError(f"need 0 < min_trust <= trust <= max_trust, got {min_trust}, {trust}, {max_trust}")
        self.atoms = atoms
        self.surrogate = surrogate
        self.trust, self.max_trust, self.min_trust = float(trust), float(max_trust), float(min_trust)
        self.inner_fmax = inner_fmax
        self.inner_steps = int(inner_steps)
        self.nsteps = 0
        self.rejected = 0
        self.fallback_steps = 0
        self.model_calls = 0
        self.learn_curvature = bool(learn_curvature)
        self.hessian: np.ndarray | None = None  # reference minus model, learnt along the steps
        self.replay = [np.asarray(x, dtype=float) for x in replay]
        self.replayed_steps = 0  # steps taken from ``replay`` rather than proposed
        self._results: dict[int, dict[str, Any]] = {}  # the reference calculator's results, by forces array

    # the reference ------------------------------------------------------------------------------------------
    def _reference(self, positions: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """E, constrained forces and raw forces of the reference at ``positions`` (one call)."""
        self.atoms.set_positions(positions, apply_constraint=False)
        e = float(self.atoms.get_potential_energy())
        raw = np.asarray(self.atoms.get_forces(apply_constraint=False), dtype=float)
        calc = self.atoms.calc
        self._results[id(raw)] = dict(calc.results) if isinstance(calc, Calculator) else {}
        return e, np.asarray(self.atoms.get_forces(), dtype=float), raw

    def _model(self, positions: np.ndarray) -> tuple[float, np.ndarray]:
        probe = self.atoms.copy()
        probe.set_constraint()
        probe.positions = positions
        probe.calc = self.surrogate
        self.model_calls += 1
        return float(probe.get_potential_energy()), np.asarray(probe.get_forces(), dtype=float)

    def _learn(self, x0: np.ndarray, f_ref0: np.ndarray, f_model0: np.ndarray, x1: np.ndarray, f_ref1: np.ndarray,
               f_model1: np.ndarray) -> None:
        """Symmetric rank-one update of the Hessian difference from one step (skipped when ill-conditioned)."""
        step = (x1 - x0).ravel()
        y = -((f_ref1 - f_ref0) - (f_model1 - f_model0)).ravel()  # change of the gradient difference
        if self.hessian is None:
            self.hessian = np.zeros((step.size, step.size))
        r = y - self.hessian @ step
        denom = float(r @ step)
        if abs(denom) > 1e-6 * np.linalg.norm(r) * np.linalg.norm(step) and np.linalg.norm(step) > 1e-8:
            self.hessian += np.outer(r, r) / denom

    def _corrected(self, x: np.ndarray, e_ref: float, f_raw: np.ndarray, f_model: np.ndarray,
                   e_model: float) -> Atoms:
        """A copy of the atoms at ``x`` (constraints kept) on the surrogate corrected to the reference there."""
        probe = self.atoms.copy()  # constraints kept: fixed atoms stay where they are
        probe.positions = x
        probe.calc = CorrectedCalculator(self.surrogate, x, e_ref - e_model, f_raw - f_model,
                                         self.hessian if self.learn_curvature else None)
        return probe

    def _predicted(self, x: np.ndarray, e_ref: float, f_raw: np.ndarray, f_model: np.ndarray, e_model: float,
                   x_new: np.ndarray) -> float:
        """The surrogate's energy change from ``x`` to a replayed ``x_new`` (one model call)."""
        probe = self._corrected(x, e_ref, f_raw, f_model, e_model)
        probe.set_positions(x_new, apply_constraint=False)
        self.model_calls += 1
        return float(probe.get_potential_energy()) - e_ref

    def _propose(self, x: np.ndarray, e_ref: float, f_raw: np.ndarray, f_model: np.ndarray, e_model: float,
                 fmax: float) -> tuple[np.ndarray, float]:
        """The surrogate's minimum from ``x``, cut to the trust radius, and the surrogate's energy change."""
        from ase.optimize import BFGS

        probe = self._corrected(x, e_ref, f_raw, f_model, e_model)
        opt = BFGS(probe, logfile=None, maxstep=min(0.2, self.trust))
        inner_fmax = self.inner_fmax if self.inner_fmax is not None else fmax / 3.0
        for _ in opt.irun(fmax=inner_fmax, steps=self.inner_steps):
            if float(np.max(np.linalg.norm(probe.positions - x, axis=1), initial=0.0)) > 1.5 * self.trust:
                break  # out of the trust region: the step is cut there anyway
        self.model_calls += opt.nsteps + 1
        step = probe.positions - x
        longest = float(np.max(np.linalg.norm(step, axis=1))) if len(step) else 0.0
        if longest > self.trust:
            step *= self.trust / longest
        probe.positions = x + step
        return x + step, float(probe.get_potential_energy()) - e_ref

    # the loop -----------------------------------------------------------------------------------------------
    def run(self, fmax: float = 0.05, steps: int = 300) -> bool:
        """Relax until the reference's largest (constrained) force is below ``fmax`` or ``steps`` reference
        calls after the first; True when converged."""
        x = self.atoms.get_positions()
        replay = self.replay
        if replay and (replay[0].shape != x.shape or not np.array_equal(replay[0], x)):
            log.warning("the replayed path does not start at these atoms' positions: ignoring it")
            replay = []
        e, f, raw = self._reference(x)
        best = (e, x.copy(), f, raw, *self._model(x))
        calls = 0
        converged = bool(np.max(np.linalg.norm(f, axis=1), initial=0.0) < fmax)
        while not converged and calls < steps and self.trust >= self.min_trust:
            e0, x0, _, raw0, em0, fm0 = best
            try:
                if calls + 1 < len(replay):  # where an earlier run went: its reference calls are journalled
                    x_new = replay[calls + 1]
                    predicted = self._predicted(x0, e0, raw0, fm0, em0, x_new)
                    self.replayed_steps += 1
                else:
                    x_new, predicted = self._propose(x0, e0, raw0, fm0, em0, fmax)
            except Exception as exc:  # noqa: BLE001 - a surrogate that breaks hands over to plain BFGS
                log.warning("surrogate step failed (%s): continuing with BFGS on the reference", exc)
                break
            e, f, raw = self._reference(x_new)  # the reference's own errors are the caller's
            calls += 1
            try:
                em, fm = self._model(x_new)
            except Exception as exc:  # noqa: BLE001
                log.warning("the model failed at the new point (%s): continuing with BFGS on the reference", exc)
                break
            if self.learn_curvature:
                self._learn(x0, raw0, fm0, x_new, raw, fm)
            change = e - e0
            if change > 1e-4 * max(1.0, abs(predicted)) and change > 0:
                self.rejected += 1
                self.trust *= 0.5
                log.debug("step %d rejected (dE %+.4f eV, predicted %+.4f): trust %.3f A", calls, change, predicted, self.trust)
                continue
            moved = float(np.max(np.linalg.norm(x_new - x0, axis=1), initial=0.0))
            if predicted < 0 and 0.5 < change / predicted < 2.0 and moved > 0.9 * self.trust:
                self.trust = min(2.0 * self.trust, self.max_trust)
            elif predicted < 0 and change / predicted < 0.25:
                self.trust = max(0.5 * self.trust, self.min_trust)
            best = (e, x_new.copy(), f, raw, em, fm)
            converged = bool(np.max(np.linalg.norm(f, axis=1), initial=0.0) < fmax)
        e, x, f, raw = best[:4]
        self.atoms.set_positions(x, apply_constraint=False)
        self._restore(self._results.get(id(raw), {}))  # the best point's results stay with it, without another call
        self._results.clear()
        if not converged and calls < steps:  # the surrogate gave up: plain BFGS on the reference from the best point
            from ase.optimize import BFGS

            opt = BFGS(self.atoms, logfile=None)
            converged = bool(opt.run(fmax=fmax, steps=steps - calls))
            self.fallback_steps = int(opt.nsteps)
            calls += self.fallback_steps
        self.nsteps = calls
        return converged

    def _restore(self, results: dict[str, Any]) -> None:
        """Put the reference's ``results`` at the atoms' current positions back into its calculator's cache
        (an ASE ``Calculator`` checks ``calc.atoms`` against the atoms), so that reading them costs no call."""
        calc = self.atoms.calc
        if isinstance(calc, Calculator) and results:
            calc.atoms = self.atoms.copy()
            calc.results = dict(results)
