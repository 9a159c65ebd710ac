"""ASE calculator over the batched :class:`~equiformer_calc.predictor.Predictor`."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from .calculators.base import reject_unknown_keywords
from .checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from .graph import DEFAULT_MIN_DISTANCE_RATIO, NeighborListCache
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
    ``min_distance_ratio`` (default 0.25) is the distance floor as a fraction of the sum of two
    atoms' covalent radii: closer pairs raise ``StructureError`` (lower it to scan compressed
    geometries; the model's ZBL repulsion, when it has one, keeps such energies physical).
    ``dispersion="d3bj"`` (or ``"d3zero"``, ``"d3bjm"``, ``"d3zerom"``, each with an optional
    ``"-atm"`` three-body term) adds Grimme's D3 for the functional ``xc`` (default ``"pbe"``) to
    energy, forces and stress (``pip install 'equiformer-calc[d3]'``); per-atom ``energies`` stay
    model-only. See :mod:`equiformer_calc.calculators.dispersion`.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]
    #: THE list of keywords this calculator accepts (besides ASE's base ones): anything else is a
    #: TypeError. Add a new keyword here and to ``__init__`` (a test checks the two agree).
    keywords = (
        "checkpoint", "model", "device", "dtype", "max_atoms_per_batch", "skin", "min_distance_ratio", "dispersion", "xc",
        "memory",
    )

    def __init__(
        self,
        checkpoint: str | None = None,
        model: Equiformer | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        max_atoms_per_batch: int = 2048,
        skin: float = 0.0,
        min_distance_ratio: float = DEFAULT_MIN_DISTANCE_RATIO,
        dispersion: str | None = None,
        xc: str = "pbe",
        memory: str = "auto",
        **kwargs: Any,
    ) -> None:
        reject_unknown_keywords(type(self).__name__, kwargs, self.keywords)
        super().__init__(**kwargs)
        self.parameters.update(dispersion=dispersion, xc=xc)
        self._d3: Any = None
        self.dispersion_term  # validate the names (and that the library is installed) now
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
            model, device=device, dtype=dtype, max_atoms_per_batch=max_atoms_per_batch,
            min_distance_ratio=min_distance_ratio, memory=self.memory,
        )

    @property
    def model(self) -> Equiformer:
        return self.predictor.model

    def set(self, **kwargs: Any) -> dict[str, Any]:
        """Change parameters; a new ``dispersion``, ``xc`` or ``memory`` is validated and drops old results."""
        if "memory" in kwargs:
            resolve_memory_mode(kwargs["memory"])  # before anything changes
        changed = super().set(**kwargs)
        if "memory" in changed:
            self.memory = self.predictor.memory = self.parameters["memory"]
            self.reset()
        if {"dispersion", "xc"} & set(changed):
            self.dispersion_term  # noqa: B018 - raises on a bad name
            self.reset()
        return changed

    @property
    def dispersion_term(self) -> Any:
        """The :class:`~equiformer_calc.calculators.dispersion.D3` term of the current
        ``dispersion`` / ``xc`` parameters, or None when dispersion is off."""
        from .calculators.dispersion import D3, parse_dispersion

        name = self.parameters.get("dispersion")
        if parse_dispersion(name) is None:
            self._d3 = None
        elif self._d3 is None or (self._d3.name, self._d3.xc) != (str(name).lower(), str(self.parameters.get("xc")).lower()):
            self._d3 = D3(name, xc=self.parameters.get("xc", "pbe"))
        return self._d3

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
        d3 = self.dispersion_term
        if d3 is not None:
            d3.add_to(result, self.atoms)
        self.results = {k: (np.asarray(v) if k not in ("energy", "free_energy") else v) for k, v in result.items()}

    def predict(self, structures: Sequence[Atoms], properties: Sequence[str] = ("energy", "forces")) -> list[dict]:
        """Energies (and forces, stress...) of many structures in batched model calls; the numbers
        equal one-by-one evaluation (D3 included when ``dispersion`` is set). Returns one dict per
        structure."""
        structures = list(structures)
        results = self.predictor.predict(structures, properties=properties)
        d3 = self.dispersion_term
        return results if d3 is None else [d3.add_to(r, s) for r, s in zip(results, structures)]

    # pickling: keep the settings and the weights, not torch modules with generated code
    def __getstate__(self) -> dict[str, Any]:
        from safetensors.torch import save

        state = {k: v for k, v in self.__dict__.items() if k not in ("predictor", "atoms", "results", "_d3")}
        model = self.model
        state["_config"] = model.config.to_dict()
        state["_weights"] = save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
        state["_max_atoms"] = self.predictor.max_atoms_per_batch
        state["_metadata"] = getattr(model, "metadata", None)
        state["_min_distance_ratio"] = self.predictor.min_distance_ratio
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from safetensors.torch import load

        config = state.pop("_config")
        weights = load(state.pop("_weights"))
        max_atoms = state.pop("_max_atoms")
        metadata = state.pop("_metadata", None)
        ratio = state.pop("_min_distance_ratio", DEFAULT_MIN_DISTANCE_RATIO)
        self.__dict__.update(state)
        self.atoms = None
        self.results = {}
        self._d3 = None
        model = Equiformer.from_config(config)
        model.load_state_dict(weights)
        if metadata is not None:
            model.metadata = metadata  # type: ignore[attr-defined]
        self.predictor = Predictor(
            model, device=self.device, dtype=self.dtype, max_atoms_per_batch=max_atoms, min_distance_ratio=ratio,
            memory=getattr(self, "memory", "auto"),
        )
