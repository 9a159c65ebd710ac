"""The shared symmetry check of the test suite (like e3nn's ``assert_equivariant``).

:func:`assert_equivariant` evaluates a structure and its images under random symmetry operations
of 3D space and of atom labels, and checks that the energy is invariant and forces and stress
transform as they must:

* rotation R (and, with ``reflection``, an improper R, det -1): positions and cell -> R x,
  forces -> R f, stress -> R S R^T;
* translation t: positions -> x + t, nothing changes (periodic images wrap);
* permutation P of the atoms: forces -> P f.

``evaluate(atoms)`` returns ``{"energy": float, "forces": (N, 3), ...}`` and optionally
``"stress"`` (Voigt 6 or 3x3); the model, the predictor and the calculator tests each pass their
own way of evaluating.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
from ase import Atoms
from ase.stress import voigt_6_to_full_3x3_stress
from scipy.spatial.transform import Rotation

__all__ = ["assert_equivariant", "random_rotation", "transform"]

Evaluate = Callable[[Atoms], Mapping[str, Any]]


def random_rotation(seed: int, reflection: bool = False) -> np.ndarray:
    """A random 3x3 rotation matrix (det +1), or with ``reflection`` an improper one (det -1)."""
    rot = Rotation.random(random_state=seed).as_matrix()
    return rot @ np.diag([-1.0, 1.0, 1.0]) if reflection else rot


def transform(atoms: Atoms, rotation: np.ndarray | None = None, translation: np.ndarray | None = None,
              permutation: np.ndarray | None = None) -> Atoms:
    """``atoms`` with positions and cell rotated (``x -> R x``), then translated, then its atoms
    reordered (new atom k is old atom ``permutation[k]``)."""
    out = atoms.copy()
    if rotation is not None:
        out.positions = atoms.positions @ rotation.T
        out.cell = atoms.cell.array @ rotation.T
    if translation is not None:
        out.positions = out.positions + translation
    if permutation is not None:
        out = out[permutation]
    return out


def _stress_matrix(stress: Any) -> np.ndarray:
    s = np.asarray(stress, dtype=np.float64)
    return voigt_6_to_full_3x3_stress(s) if s.shape == (6,) else s.reshape(3, 3)


def assert_equivariant(
    evaluate: Evaluate,
    atoms: Atoms,
    *,
    seed: int = 0,
    reflection: bool = True,
    rtol: float = 1e-5,
    atol: float = 1e-8,
) -> dict[str, Any]:
    """Check ``evaluate`` on ``atoms`` against a random rotation, a reflection (unless
    ``reflection=False``, e.g. for an SE(3) model), a translation, a permutation and all of them at
    once. Energies must agree within ``rtol`` relative (at least ``atol``), forces and stress
    within ``10 * rtol`` of their largest component. Forces must not all vanish (a check on zeros
    would prove nothing). Returns the reference result."""
    rng = np.random.default_rng(seed)
    ref = evaluate(atoms)
    forces = np.asarray(ref["forces"], dtype=np.float64)
    assert np.abs(forces).max() > 1e-4, "forces are ~0: the check would be vacuous; use a less symmetric structure"
    stress = _stress_matrix(ref["stress"]) if "stress" in ref else None
    cases: dict[str, dict[str, Any]] = {
        "rotation": {"rotation": random_rotation(seed)},
        "translation": {"translation": rng.normal(scale=3.0, size=3)},
        "permutation": {"permutation": rng.permutation(len(atoms))},
    }
    if reflection:
        cases["reflection"] = {"rotation": random_rotation(seed + 1, reflection=True)}
    cases["all"] = {"rotation": random_rotation(seed + 2, reflection=reflection),
                    "translation": rng.normal(scale=3.0, size=3), "permutation": rng.permutation(len(atoms))}
    f_scale = max(np.abs(forces).max(), 1e-3)
    for name, op in cases.items():
        out = evaluate(transform(atoms, **op))
        rot = op.get("rotation", np.eye(3))
        perm = op.get("permutation", np.arange(len(atoms)))
        e0, e1 = float(ref["energy"]), float(out["energy"])
        assert abs(e1 - e0) <= max(rtol * max(abs(e0), 1.0), atol), f"{name}: energy {e1} != {e0}"
        np.testing.assert_allclose(np.asarray(out["forces"]), (forces @ rot.T)[perm], rtol=0,
                                   atol=max(10 * rtol * f_scale, atol), err_msg=f"{name}: forces")
        if stress is not None:
            s_scale = max(np.abs(stress).max(), 1e-6)
            np.testing.assert_allclose(_stress_matrix(out["stress"]), rot @ stress @ rot.T, rtol=0,
                                       atol=max(10 * rtol * s_scale, atol), err_msg=f"{name}: stress")
    return dict(ref)
