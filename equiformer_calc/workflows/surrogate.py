"""Relax on an expensive reference calculator with few calls, steered by the model (a corrected surrogate).

A reference relaxation (DFT, or the teacher) costs one reference call per optimiser step, and BFGS spends
several of them learning a curvature the model already knows. :class:`SurrogateOptimizer` spends model calls
instead: at the current point ``x_k`` the reference gives E_ref and F_ref; the surrogate

    E_s(x) = E_model(x) + [E_ref(x_k) - E_model(x_k)] - [F_ref(x_k) - F_model(x_k)] . (x - x_k)

agrees with the reference in energy and forces at ``x_k`` (a first-order correction of the model), and is
relaxed with the model alone (BFGS, to ``inner_fmax``). Its minimum, cut to a trust radius (the largest
displacement of any atom), is the next point; the reference is called there. A step that raises the
reference energy is rejected (the radius halves and the step is redone from the best point); one whose
energy change agrees with the surrogate's prediction doubles the radius (up to ``max_trust``). A fixed point
is a point where the reference forces vanish: convergence is judged on the reference's own forces (``fmax``,
constraints applied), exactly as a BFGS run on the reference judges it. When the surrogate cannot make progress
(radius below ``min_trust``) the relaxation continues with plain BFGS on the reference, from the best point.

So every reference call is a step, and a model close to the reference makes each step a near-Newton step:
the final structure is a reference minimum (to ``fmax``), whichever model steered. What it costs is model
calls (tens per reference call), which are cheap next to DFT.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

__all__ = ["SurrogateOptimizer", "CorrectedCalculator"]

log = logging.getLogger(__name__)


class CorrectedCalculator(Calculator):
    """``model`` plus the first-order correction that makes it agree with a reference at ``x0``:
    E = E_model + ``de`` - sum(``df`` * (x - ``x0``)), F = F_model + ``df`` (``df``: reference minus model
    forces at ``x0``, shape (N, 3))."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, model: Calculator, x0: np.ndarray, de: float, df: np.ndarray) -> None:
        super().__init__()
        self.model = model
        self.x0 = np.array(x0, dtype=float)
        self.de = float(de)
        self.df = np.array(df, dtype=float)

    def calculate(self, atoms: Atoms | None = None, properties: Any = ("energy",), system_changes: Any = all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        probe = self.atoms.copy()
        probe.set_constraint()
        probe.calc = self.model
        e = float(probe.get_potential_energy())
        f = np.asarray(probe.get_forces(), dtype=float)
        self.results = {"energy": e + self.de - float(np.sum(self.df * (self.atoms.positions - self.x0))),
                        "forces": f + self.df}


class SurrogateOptimizer:
    """Relax ``atoms`` (its calculator is the reference) steered by the ``surrogate`` calculator (the model);
    see the module docstring. ASE's optimiser interface: ``run(fmax, steps) -> converged``, ``nsteps``
    (reference calls after the first). ``trust`` / ``max_trust`` / ``min_trust``: the step's largest atomic
    displacement (A); ``inner_fmax`` (default ``fmax / 3``) and ``inner_steps``: the surrogate's relaxation.
    After ``run`` the atoms are at the lowest-energy point the reference evaluated, with its results."""

    def __init__(self, atoms: Atoms, surrogate: Calculator, trust: float = 0.2, max_trust: float = 0.5,
                 min_trust: float = 0.01, inner_fmax: float | None = None, inner_steps: int = 300) -> None:
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

    # the reference ------------------------------------------------------------------------------------------
    def _reference(self, positions: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """E, constrained forces and raw forces of the reference at ``positions`` (one call)."""
        self.atoms.set_positions(positions, apply_constraint=False)
        e = float(self.atoms.get_potential_energy())
        raw = np.asarray(self.atoms.get_forces(apply_constraint=False), dtype=float)
        return e, np.asarray(self.atoms.get_forces(), dtype=float), raw

    def _model(self, positions: np.ndarray) -> tuple[float, np.ndarray]:
        probe = self.atoms.copy()
        probe.set_constraint()
        probe.positions = positions
        probe.calc = self.surrogate
        self.model_calls += 1
        return float(probe.get_potential_energy()), np.asarray(probe.get_forces(), dtype=float)

    def _propose(self, x: np.ndarray, e_ref: float, f_raw: np.ndarray, fmax: float) -> tuple[np.ndarray, float]:
        """The surrogate's minimum from ``x``, cut to the trust radius, and the surrogate's energy change."""
        from ase.optimize import BFGS

        e_model, f_model = self._model(x)
        corrected = CorrectedCalculator(self.surrogate, x, e_ref - e_model, f_raw - f_model)
        probe = self.atoms.copy()  # constraints kept: fixed atoms stay where they are
        probe.positions = x
        probe.calc = corrected
        opt = BFGS(probe, logfile=None, maxstep=min(0.2, self.trust))
        opt.run(fmax=self.inner_fmax if self.inner_fmax is not None else fmax / 3.0, steps=self.inner_steps)
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
        e, f, raw = self._reference(x)
        best = (e, x.copy(), f, raw)
        calls = 0
        converged = bool(np.max(np.linalg.norm(f, axis=1), initial=0.0) < fmax)
        while not converged and calls < steps and self.trust >= self.min_trust:
            e0, x0, _, raw0 = best
            try:
                x_new, predicted = self._propose(x0, e0, raw0, fmax)
            except Exception as exc:  # noqa: BLE001 - a surrogate that breaks hands over to plain BFGS
                log.warning("surrogate step failed (%s): continuing with BFGS on the reference", exc)
                break
            e, f, raw = self._reference(x_new)
            calls += 1
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
            best = (e, x_new.copy(), f, raw)
            converged = bool(np.max(np.linalg.norm(f, axis=1), initial=0.0) < fmax)
        e, x, f, raw = best
        self.atoms.set_positions(x, apply_constraint=False)
        self._restore(e, raw)  # the reference's results of the best point stay with it, without another call
        if not converged and calls < steps:  # the surrogate gave up: plain BFGS on the reference from the best point
            from ase.optimize import BFGS

            opt = BFGS(self.atoms, logfile=None)
            converged = bool(opt.run(fmax=fmax, steps=steps - calls))
            self.fallback_steps = int(opt.nsteps)
            calls += self.fallback_steps
        self.nsteps = calls
        return converged

    def _restore(self, energy: float, raw_forces: np.ndarray) -> None:
        """Put the reference's results at the atoms' current positions into its calculator's cache (an ASE
        ``Calculator`` checks ``calc.atoms`` against the atoms), so that reading them costs no call."""
        calc = self.atoms.calc
        if isinstance(calc, Calculator):
            calc.atoms = self.atoms.copy()
            calc.results = {"energy": float(energy), "forces": np.array(raw_forces)}
