"""Start training from a trained checkpoint: fine-tuning, or warm-starting a new model.

:func:`init_from_checkpoint` rebuilds a checkpoint's architecture and weights for training on new
data. The data's elements must all be known to the checkpoint (a clear :class:`FineTuneError` names the
ones that are not), unless ``new_elements=True``: then the element-indexed weights (atom embedding,
reference energies) grow rows for the new elements, initialised fresh, and every other weight is kept.

:func:`refit_energy_references` fits the new labels' energy zero: the per-element corrections that best
explain (least squares) the difference between the labels and the model's current predictions, added to
the model's reference energies. Fine-tuning onto another calculator (EMT, another DFT functional) then
starts from the right energy scale instead of spending its first steps on constant offsets.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from ase.data import chemical_symbols

from ..checkpoint import load_checkpoint
from ..model import Equiformer, EquiformerConfig
from ..predictor import compute
from .data import Sample, collate

__all__ = ["FineTuneError", "init_from_checkpoint", "refit_energy_references", "data_elements"]

log = logging.getLogger(__name__)


class FineTuneError(ValueError):
    """The checkpoint cannot start training on this data (for example: unknown elements)."""


def data_elements(samples: Sequence[Sample]) -> list[str]:
    """Chemical symbols present in ``samples``, by atomic number."""
    numbers: set[int] = set()
    for s in samples:
        numbers.update(int(z) for z in torch.unique(s.graph.numbers).tolist())
    return [chemical_symbols[z] for z in sorted(numbers)]


def init_from_checkpoint(name_or_path: str, needed: Sequence[str], new_elements: bool = False) -> Equiformer:
    """The checkpoint's model, ready to train on data holding the elements ``needed``.

    Args:
        name_or_path: a shipped checkpoint name or a ``.safetensors`` path.
        needed: elements of the training data.
        new_elements: grow the model by the elements it lacks (fresh embedding rows, zero reference
            energies) instead of raising.

    Raises:
        FineTuneError: the data holds elements the checkpoint lacks and ``new_elements`` is False.
    """
    base = load_checkpoint(name_or_path)
    missing = [e for e in needed if e not in base.elements]
    if not missing:
        return base
    if not new_elements:
        raise FineTuneError(
            f"the training data holds element(s) {missing} that checkpoint {name_or_path!r} lacks "
            f"(it supports {base.elements}); set init_new_elements: true to learn them from scratch"
        )
    config = EquiformerConfig.from_dict({**base.config.to_dict(), "elements": [*base.elements, *missing]})
    torch.manual_seed(0)
    grown = Equiformer(config=config)
    n_old = len(base.elements)
    target = grown.state_dict()
    for key, old in base.state_dict().items():
        new = target[key]
        if old.shape == new.shape:
            new.copy_(old)
            continue
        differing = [d for d in range(old.dim()) if old.shape[d] != new.shape[d]]
        if len(differing) != 1 or old.shape[differing[0]] != n_old:
            raise FineTuneError(f"cannot grow {key}: shapes {tuple(old.shape)} -> {tuple(new.shape)}")
        new.narrow(differing[0], 0, n_old).copy_(old)
    grown.load_state_dict(target)
    log.info("grew %s by element(s) %s (fresh embedding rows)", name_or_path, missing)
    return grown


@torch.no_grad()
def _predicted_energies(model: Equiformer, samples: Sequence[Sample], batch_size: int = 16) -> np.ndarray:
    out = []
    dtype = next(model.parameters()).dtype
    for k in range(0, len(samples), batch_size):
        batch = collate(samples[k : k + batch_size], "cpu", dtype)
        energies = compute(model, batch.graph, forces=False)["energy"]
        out.append(energies.detach().double().cpu().numpy())
    return np.concatenate(out)


def refit_energy_references(model: Equiformer, samples: Sequence[Sample], max_samples: int = 2000) -> np.ndarray:
    """Shift the model's per-element reference energies to the labels' energy zero (in place).

    Returns the corrections (eV per atom of each element of ``model.elements``) that were added.
    """
    chosen = list(samples[:max_samples])
    index = {z: k for k, z in enumerate(model.atomic_numbers)}
    counts = np.zeros((len(chosen), len(model.elements)))
    for r, s in enumerate(chosen):
        for z, c in zip(*np.unique(s.graph.numbers.numpy(), return_counts=True)):
            counts[r, index[int(z)]] = c
    residual = np.array([s.energy for s in chosen]) - _predicted_energies(model, chosen)
    present = counts.sum(0) > 0
    delta = np.zeros(len(model.elements))
    sol, *_ = np.linalg.lstsq(counts[:, present], residual, rcond=None)
    delta[present] = sol
    model.atomic_energies.add_(torch.from_numpy(delta).to(model.atomic_energies))
    after = residual - counts @ delta
    log.info("energy references refit on %d frames: residual %.1f -> %.1f meV/atom (mean abs)", len(chosen),
             1000 * float(np.mean(np.abs(residual / counts.sum(1)))), 1000 * float(np.mean(np.abs(after / counts.sum(1)))))
    return delta
