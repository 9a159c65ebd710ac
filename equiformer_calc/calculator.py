"""ASE calculator over the batched :class:`~equiformer_calc.predictor.Predictor`."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from .checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from .graph import NeighborListCache
from .model import Equiformer
from .predictor import Predictor, model_task, not_a_potential_message, resolve_memory_mode

__all__ = ["EquiformerCalculator"]

log = logging.getLogger(__name__)


class EquiformerCalculator(Calculator):
    """Energy, forces, stress and per-atom energies of an Equiformer model, for any ASE workflow.

    ``EquiformerCalculator()`` loads the default shipped checkpoint; ``checkpoint`` is a path or a
    shipped name; ``model`` an in-memory :class:`~equiformer_calc.model.Equiformer`.
    ``dtype="float64"`` gives finite-difference-grade results. Stress is available for systems
    periodic in 3D only. ``predict(list_of_atoms)`` evaluates many structures in one batched call.
    ``skin > 0`` (Angstrom) reuses the neighbour list of the attached structure between calls
    until an atom moved more than ``skin / 2`` (MD, relaxations; identical results, see
    :class:`~equiformer_calc.graph.NeighborListCache`); ``neighbor_cache`` then counts the searches.
    ``memory`` ("auto", "fast" or "low", see :data:`~equiformer_calc.predictor.MEMORY_MODES`):
    "low" evaluates large systems in a fraction of the memory (same numbers to round-off, about
    1.4x the time); "auto" (default) switches to it when the fast mode would not fit in memory.

    A checkpoint whose metadata ``task`` is not ``"potential"`` (a direct OC20 IS2RE model
    converted from the reference code: the energy is the predicted *relaxed* adsorption energy of
    an initial structure) returns ``energy`` (and ``energies``) only; forces and stress raise
    ``PropertyNotImplementedError`` saying why.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(
        self,
        checkpoint: str | None = None,
        model: Equiformer | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        max_atoms_per_batch: int = 2048,
        skin: float = 0.0,
        memory: str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.memory = resolve_memory_mode(memory)
        self.parameters["memory"] = self.memory
        self.skin = float(skin)
        self.neighbor_cache: NeighborListCache | None = NeighborListCache(self.skin) if self.skin > 0 else None
        if model is not None and checkpoint is not None:
            raise ValueError("give either checkpoint or model, not both")
        if model is None:
            checkpoint = checkpoint or DEFAULT_CHECKPOINT
            model = load_checkpoint(checkpoint, device=device)
        self.checkpoint = checkpoint
        self.device = device
        self.dtype = dtype
        self.predictor = Predictor(
            model, device=device, dtype=dtype, max_atoms_per_batch=max_atoms_per_batch, memory=self.memory
        )

    @property
    def model(self) -> Equiformer:
        return self.predictor.model

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        assert self.atoms is not None
        task = model_task(self.model)
        if task != "potential":
            for prop in ("forces", "stress"):
                if prop in properties:
                    raise PropertyNotImplementedError(not_a_potential_message(task, prop))
            result = self.predictor.predict([self.atoms], properties=["energy", "energies"])[0]
            self.results = {k: (np.asarray(v) if k == "energies" else v) for k, v in result.items()}
            return
        periodic = bool(self.atoms.pbc.all())
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError(
                f"stress is only defined for systems periodic in all three directions (pbc={self.atoms.pbc.tolist()})"
            )
        props = ["energy", "forces", "energies"] + (["stress"] if periodic else [])
        cache = getattr(self, "neighbor_cache", None)
        caches = None if cache is None else [cache]
        result = self.predictor.predict([self.atoms], properties=props, neighbor_caches=caches)[0]
        self.results = {k: (np.asarray(v) if k not in ("energy", "free_energy") else v) for k, v in result.items()}

    def predict(self, structures: Sequence[Atoms], properties: Sequence[str] = ("energy", "forces")) -> list[dict]:
        """Energies (and forces, stress...) of many structures in batched model calls; the numbers
        equal one-by-one evaluation. Returns one dict per structure."""
        return self.predictor.predict(structures, properties=properties)

    # pickling: keep the settings and the weights, not torch modules with generated code
    def __getstate__(self) -> dict[str, Any]:
        from safetensors.torch import save

        state = {k: v for k, v in self.__dict__.items() if k not in ("predictor", "atoms", "results")}
        model = self.model
        state["_config"] = model.config.to_dict()
        state["_weights"] = save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
        state["_max_atoms"] = self.predictor.max_atoms_per_batch
        state["_metadata"] = getattr(model, "metadata", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from safetensors.torch import load

        config = state.pop("_config")
        weights = load(state.pop("_weights"))
        max_atoms = state.pop("_max_atoms")
        metadata = state.pop("_metadata", None)
        self.__dict__.update(state)
        self.atoms = None
        self.results = {}
        model = Equiformer.from_config(config)
        model.load_state_dict(weights)
        if metadata is not None:
            model.metadata = metadata  # type: ignore[attr-defined]
        self.predictor = Predictor(
            model, device=self.device, dtype=self.dtype, max_atoms_per_batch=max_atoms, memory=getattr(self, "memory", "auto")
        )
