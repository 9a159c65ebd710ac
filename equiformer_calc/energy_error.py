"""An energy-error model on the model's trunk features: what the committee of readout heads adds to
energies' uncertainty (issue 28).

Why: the student's energy errors are systematic, the same for every member fitted to the same data (a
committee of heads or of fine-tuned models spreads by meV where the errors are tenths of an eV,
``benchmarks/RESULTS.md`` "Uncertainty"). They are shared by similar environments of the same kind of
adsorbate, so the error of a new structure is estimated from the errors the model makes on its
training frames whose atoms look most alike to the readout:

* **error** ``p`` (eV): every training frame that holds atoms of the *tracked* elements (default H, C,
  N, O: adsorbates and gas molecules) spreads its residual ``E_ref - E_model`` evenly over those atoms;
  an atom of a new structure gets the mean of its ``k`` nearest training atoms of its own element
  (Euclidean distance between the invariant trunk features that the readout sees), and ``p`` is the sum
  over the structure's tracked atoms (signed: the expected ``E_ref - E_model``). Atoms of other elements
  (metal slabs, bulk) add nothing: their errors are smaller (``benchmarks/uncertainty.json``).
  With ``magnitude`` the atom gets the mean of its neighbours' *absolute* shares instead (``p >= 0``: the
  expected size of the error, not its sign), so neighbours with errors of opposite signs no longer cancel;
  on held-out systems this ranks the errors better (``benchmarks/RESULTS.md`` "Uncertainty").
* **novelty** ``q`` (eV): per element, the Mahalanobis distance ``m_i`` of each atom's trunk features to
  those of its element in the training frames (every element); atoms beyond the training frames' 99th
  percentile ``m99`` add ``scale * (m_i / m99 - 1)``, with ``scale`` the root-mean-square of the per-atom
  errors above (a heuristic conversion to eV, not fitted). So a structure unlike any training frame (a
  compressed one, a new element environment) gets a larger uncertainty even where ``p`` is small.

Both are invariant under rotations, translations and permutations (the features are), cost one small
distance computation per call, and are detached from the positions (the forces' uncertainty is the heads'
own). :func:`~equiformer_calc.committee.compute_with_uncertainty` turns them into committee members
(``E_m = E_heads,m + z_m p + y_m q`` with fixed sign patterns ``z``, ``y``), so that
``energy_uncertainty`` stays the spread of ``energy_committee`` and differences of structures (an
adsorption energy: system minus slab minus gas references) get the error of the difference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["EnergyErrorModel", "TRACKED_ELEMENTS", "fit_energy_error_model", "sign_patterns"]

#: the elements whose atoms carry the error estimate by default (adsorbates, gas molecules)
TRACKED_ELEMENTS = ("H", "C", "N", "O")
#: the tensors of an :class:`EnergyErrorModel` in a committee file (prefixed ``err.`` there)
TENSORS = ("features", "species", "error", "mean", "precision", "m99")


@dataclass
class EnergyErrorModel:
    """The error and novelty estimates of the module's docstring, for one model.

    features (R, F), species (R,) and error (R,): the training atoms of the tracked elements, their
    element index and their share of their frame's residual (eV); mean (n_el, F), precision
    (n_el, F, F) and m99 (n_el,): each element's feature mean, inverse covariance and the 99th
    percentile of its training atoms' Mahalanobis distances (inf for an element without training atoms);
    k: neighbours per atom; scale: eV per unit of excess novelty; magnitude: ``p`` from the neighbours'
    absolute errors (an unsigned error size) instead of their signed mean."""

    features: torch.Tensor
    species: torch.Tensor
    error: torch.Tensor
    mean: torch.Tensor
    precision: torch.Tensor
    m99: torch.Tensor
    k: int = 10
    scale: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)
    magnitude: bool = False

    def to(self, device: torch.device | str, dtype: torch.dtype) -> "EnergyErrorModel":
        """A copy on ``device``, floats in ``dtype`` (species stay integers)."""
        conv = {k: getattr(self, k).to(device=device, dtype=torch.long if k == "species" else dtype) for k in TENSORS}
        return EnergyErrorModel(**conv, k=self.k, scale=self.scale, metadata=dict(self.metadata), magnitude=self.magnitude)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors to store: species int64, the training atoms' features float16 (half the file; the
        neighbours found are the same to a few in 10^4 of a distance), the rest float32."""
        kinds = {"species": torch.long, "features": torch.float16}
        return {k: getattr(self, k).detach().cpu().contiguous().to(kinds.get(k, torch.float32)) for k in TENSORS}

    def atom_terms(self, features: torch.Tensor, species: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-atom error ``p_i`` and novelty ``q_i`` (eV, float64, no gradient) of (N, F) trunk features."""
        with torch.no_grad():
            f = features.detach().to(self.mean.dtype)
            p = torch.zeros(len(f), dtype=torch.float64, device=f.device)
            for e in torch.unique(species).tolist():
                here = species == e
                ref = self.species == e
                n_ref = int(ref.sum())
                if n_ref == 0:
                    continue
                d = torch.cdist(f[here], self.features[ref])
                idx = d.topk(min(self.k, n_ref), dim=1, largest=False).indices
                near = self.error[ref][idx].to(torch.float64)
                p[here] = (near.abs() if self.magnitude else near).mean(dim=1)
            z = f - self.mean[species]
            m = torch.einsum("nf,nfg,ng->n", z, self.precision[species], z).clamp_min(0).sqrt().to(torch.float64)
            excess = (m / self.m99[species].to(torch.float64) - 1.0).clamp_min(0.0)
            q = self.scale * torch.nan_to_num(excess, nan=0.0, posinf=0.0)
        return p, q


def sign_patterns(members: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two fixed, orthogonal, zero-mean +-1 patterns over ``members`` (a multiple of 4): ``z_m = (-1)^m``
    and ``y_m = (-1)^(m // 2)``; adding ``z p + y q`` to the members adds ``p^2 + q^2`` to their variance."""
    if members % 4:
        raise ValueError(f"an energy-error model needs a committee of a multiple of 4 members, got {members}")
    m = torch.arange(members)
    return (1 - 2 * (m % 2)).to(torch.float64), (1 - 2 * ((m // 2) % 2)).to(torch.float64)


def fit_energy_error_model(
    features: np.ndarray, owner: np.ndarray, species: np.ndarray, residuals: Sequence[float], elements: Sequence[str],
    tracked: Sequence[str] = TRACKED_ELEMENTS, k: int = 10, ridge: float = 1e-3, magnitude: bool = False,
) -> EnergyErrorModel:
    """The model of the module's docstring from training frames' trunk features.

    features (atoms, F), owner (atoms,) the frame of each atom, species (atoms,) its element index in
    ``elements`` (the model's), residuals (frames,) ``E_ref - E_model`` of each frame (eV); ``tracked``:
    the elements that carry the error; ``k``: neighbours; ``ridge``: the covariances' regularisation,
    relative to their mean variance; ``magnitude``: ``p`` as the neighbours' mean absolute error.
    """
    features = np.asarray(features, dtype=float)
    owner = np.asarray(owner)
    species = np.asarray(species)
    residuals = np.asarray(residuals, dtype=float)
    n_frames = len(residuals)
    if owner.shape != species.shape or len(features) != len(owner) or (len(owner) and owner.max() >= n_frames):
        raise ValueError("features, owner and species must describe the same atoms of the residuals' frames")
    unknown = [s for s in tracked if s not in elements]
    if unknown:
        raise ValueError(f"tracked elements {unknown} are not among the model's elements {list(elements)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    tracked_idx = np.array([list(elements).index(s) for s in tracked])
    is_tracked = np.isin(species, tracked_idx)
    per_frame = np.bincount(owner[is_tracked], minlength=n_frames)
    if not is_tracked.any():
        raise ValueError(f"no atom of the tracked elements {list(tracked)} in the frames: nothing to learn errors from")
    share = residuals / np.maximum(per_frame, 1)
    n_el, width = len(elements), features.shape[1]
    mean = np.zeros((n_el, width))
    precision = np.zeros((n_el, width, width))
    m99 = np.full(n_el, np.inf)
    for e in range(n_el):
        x = features[species == e]
        if len(x) < 2:
            continue
        mean[e] = x.mean(axis=0)
        cov = np.cov(x.T)
        cov += ridge * np.trace(cov) / width * np.eye(width) + 1e-12 * np.eye(width)
        precision[e] = np.linalg.inv(cov)
        z = x - mean[e]
        m99[e] = float(np.quantile(np.sqrt(np.einsum("nf,fg,ng->n", z, precision[e], z).clip(0)), 0.99))
    error = share[owner[is_tracked]]
    return EnergyErrorModel(
        # rounded as they are stored (float16), so that a fitted model and its file give the same numbers
        features=torch.as_tensor(features[is_tracked]).to(torch.float16).to(torch.float64), species=torch.as_tensor(species[is_tracked], dtype=torch.long),
        error=torch.as_tensor(error), mean=torch.as_tensor(mean), precision=torch.as_tensor(precision),
        m99=torch.as_tensor(m99), k=int(k), scale=float(np.sqrt(np.mean(error**2))), magnitude=bool(magnitude),
        metadata={"tracked": list(tracked), "atoms": int(is_tracked.sum()),
                  "frames": int((per_frame > 0).sum()), "ridge": ridge},
    )
