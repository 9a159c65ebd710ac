"""ASE calculator over the batched :class:`~equiformer_calc.predictor.Predictor`."""

from __future__ import annotations

import logging
from typing import Any, Sequence

from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError

from .base import EquiformerCalculatorBase, reject_unknown_keywords
from ..checkpoint import DEFAULT_CHECKPOINT, CheckpointError, load_checkpoint
from ..committee import attach_committee
from ..graph import DEFAULT_MIN_DISTANCE_RATIO, NeighborListCache
from ..integrations.d3 import D3, DispersionPredictor, parse_dispersion
from ..model import Equiformer
from ..predictor import Predictor, model_task, not_a_potential_message, resolve_dtype, resolve_memory_mode
from ..runtime import check_device

__all__ = ["EquiformerCalculator"]

log = logging.getLogger(__name__)

class EquiformerCalculator(EquiformerCalculatorBase):
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
    model-only. See :mod:`equiformer_calc.integrations.d3`.

    Every setting is an ASE parameter (``calc.parameters``, ``calc.todict()``, recorded by
    ``ase db`` and trajectories): ``checkpoint`` (the name or path it was loaded from; for
    ``model=`` the name of the checkpoint the model came from, ``None`` for a model built in
    memory) and ``checkpoint_sha256`` (the digest of that file; give it to the constructor to
    insist on exactly that file), ``device``, ``dtype``, ``max_atoms_per_batch``, ``skin``,
    ``min_distance_ratio``, ``dispersion``, ``xc``, ``memory`` and ``uncertainty`` (fixed once built:
    "auto" gives ``results["energy_uncertainty"]`` (eV) and ``results["energy_committee"]`` (the members'
    energies) when the checkpoint ships a committee of its weights, "forces" (or True) also
    ``results["forces_uncertainty"]`` (eV/A per atom; one extra backward pass per member), "off" (or
    False) none; see :mod:`equiformer_calc.committee`). ``calc.set(...)`` changes the
    ``settable`` ones; the model, device and dtype are fixed once built. The predictor works on its
    own copy of a ``model`` passed in (the caller's module is never converted or frozen).
    """

    #: THE list of keywords this calculator accepts (besides ASE's base ones): anything else is a
    #: TypeError. Add a new keyword here, to ``__init__`` (a test checks the two agree) and, when it
    #: is a setting, to ``default_parameters``.
    keywords = (
        "checkpoint", "model", "device", "dtype", "max_atoms_per_batch", "skin", "min_distance_ratio", "dispersion", "xc",
        "memory", "checkpoint_sha256", "uncertainty",
    )
    default_parameters: dict[str, Any] = {
        "checkpoint": None,
        "checkpoint_sha256": None,
        "device": "cpu",
        "dtype": "float32",
        "max_atoms_per_batch": 2048,
        "skin": 0.0,
        "min_distance_ratio": DEFAULT_MIN_DISTANCE_RATIO,
        "dispersion": None,
        "xc": "pbe",
        "memory": "auto",
        "uncertainty": "auto",
    }
    settable = ("max_atoms_per_batch", "skin", "min_distance_ratio", "dispersion", "xc", "memory")

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
        checkpoint_sha256: str | None = None,
        uncertainty: Any = "auto",
        **kwargs: Any,
    ) -> None:
        reject_unknown_keywords(type(self).__name__, kwargs, self.keywords)
        super().__init__(**kwargs)
        if model is not None and checkpoint is not None:
            raise ValueError("give either checkpoint or model, not both")
        check_device(device)  # before any weights move there: a clear error for a device this machine lacks
        self.parameters.update(
            dtype=str(resolve_dtype(dtype)).replace("torch.", ""), device=str(device), memory=resolve_memory_mode(memory),
            max_atoms_per_batch=int(max_atoms_per_batch), skin=_skin(skin), min_distance_ratio=float(min_distance_ratio),
            dispersion=dispersion, xc=xc,
        )
        self._d3: Any = None
        self.dispersion_term  # validate the names (and that the library is installed) now
        owned = model is None
        if model is None:
            checkpoint = checkpoint or DEFAULT_CHECKPOINT
            model = load_checkpoint(checkpoint, device=device)
        info = model.checkpoint
        sha256 = info.sha256 if info is not None else None
        if checkpoint_sha256 is not None and checkpoint_sha256 != sha256:
            raise CheckpointError(
                f"checkpoint {checkpoint or (info.name if info else 'in-memory model')!r} has sha256 {sha256}, "
                f"not the checkpoint_sha256={checkpoint_sha256!r} asked for"
            )
        self.parameters.update(checkpoint=checkpoint or (info.name if info else None), checkpoint_sha256=sha256)
        _check_dispersion_task(model, dispersion)
        self.neighbor_cache: NeighborListCache | None = None
        self._set_skin(self.parameters["skin"])
        p = self.parameters
        self.predictor = Predictor(
            model, device=p["device"], dtype=p["dtype"], max_atoms_per_batch=p["max_atoms_per_batch"],
            min_distance_ratio=p["min_distance_ratio"], memory=p["memory"], copy_model=not owned,
        )
        self.parameters["uncertainty"] = uncertainty
        attach_committee(self.predictor, uncertainty)

    @property
    def model(self) -> Equiformer:
        return self.predictor.model

    def set(self, **kwargs: Any) -> dict[str, Any]:
        """Change settable parameters (``memory``, ``dispersion``, ``xc``, ``skin``,
        ``min_distance_ratio``, ``max_atoms_per_batch``): each new value is validated before
        anything changes, and a change of what the numbers depend on drops old results."""
        if "memory" in kwargs:
            resolve_memory_mode(kwargs["memory"])
        if "skin" in kwargs:
            _skin(kwargs["skin"])
        if "min_distance_ratio" in kwargs and not kwargs["min_distance_ratio"] >= 0:
            raise ValueError(f"min_distance_ratio must be >= 0, got {kwargs['min_distance_ratio']}")
        if {"dispersion", "xc"} & set(kwargs):
            name = kwargs.get("dispersion", self.parameters["dispersion"])
            _make_d3(name, kwargs.get("xc", self.parameters["xc"]))  # raises on a bad name
            _check_dispersion_task(self.model, name)
        changed = super().set(**kwargs)
        if "memory" in changed:
            self.predictor.memory = self.parameters["memory"]
        if "skin" in changed:
            self._set_skin(self.parameters["skin"])
        if "min_distance_ratio" in changed:
            self.predictor.min_distance_ratio = float(self.parameters["min_distance_ratio"])
        if "max_atoms_per_batch" in changed:
            self.predictor.max_atoms_per_batch = int(self.parameters["max_atoms_per_batch"])
        if {"memory", "min_distance_ratio", "dispersion", "xc"} & set(changed):
            self.reset()
        return changed

    def _set_skin(self, skin: float) -> None:
        self.neighbor_cache = NeighborListCache(skin) if skin > 0 else None

    @property
    def dispersion_term(self) -> Any:
        """The :class:`~equiformer_calc.integrations.d3.D3` term of the current
        ``dispersion`` / ``xc`` parameters, or None when dispersion is off."""
        name, xc = self.parameters.get("dispersion"), self.parameters.get("xc", "pbe")
        if self._d3 is None or (self._d3.name, self._d3.xc) != (str(name).lower(), str(xc).lower()):
            self._d3 = _make_d3(name, xc)
        return self._d3

    def calculation_properties(self, properties: Sequence[str], periodic: bool) -> list[str]:
        """Energy and per-atom energies only for a model whose energy is not a potential (forces
        and stress are refused, saying why); else the base class's set."""
        task = model_task(self.model)
        if task == "potential":
            return super().calculation_properties(properties, periodic)
        for prop in ("forces", "stress"):
            if prop in properties:
                raise PropertyNotImplementedError(not_a_potential_message(task, prop))
        return ["energy", "energies"]

    def predict(self, structures: Sequence[Atoms], properties: Sequence[str] = ("energy", "forces")) -> list[dict]:
        """Energies (and forces, stress...) of many structures in batched model calls; the numbers
        equal one-by-one evaluation (D3 included when ``dispersion`` is set). Returns one dict per
        structure. The attached structure alone (``calculate()``) reuses the ``skin`` neighbour list."""
        structures = list(structures)
        attached = len(structures) == 1 and structures[0] is self.atoms
        caches = [self.neighbor_cache] if attached and self.neighbor_cache is not None else None
        d3 = self.dispersion_term
        predictor = self.predictor if d3 is None else DispersionPredictor(self.predictor, d3)
        return predictor.predict(structures, properties=properties, neighbor_caches=caches)

    # pickling: keep the settings and the weights, not torch modules with generated code
    def __getstate__(self) -> dict[str, Any]:
        from safetensors.torch import save

        state = {k: v for k, v in self.__dict__.items() if k not in ("predictor", "atoms", "results", "_d3")}
        model = self.model
        state["_config"] = model.config.to_dict()
        state["_weights"] = save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
        state["_checkpoint"] = model.checkpoint
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from safetensors.torch import load

        config = state.pop("_config")
        weights = load(state.pop("_weights"))
        info = state.pop("_checkpoint")
        self.__dict__.update(state)
        self.atoms = None
        self.results = {}
        self._d3 = None
        model = Equiformer.from_config(config)
        model.load_state_dict(weights)
        model.checkpoint = info
        p = self.parameters
        self.predictor = Predictor(
            model, device=p["device"], dtype=p["dtype"], max_atoms_per_batch=p["max_atoms_per_batch"],
            min_distance_ratio=p["min_distance_ratio"], memory=p["memory"], copy_model=False,
        )
        attach_committee(self.predictor, p.get("uncertainty", "auto"))


def _skin(skin: float) -> float:
    if not skin >= 0:
        raise ValueError(f"skin must be >= 0 Angstrom, got {skin}")
    return float(skin)


def _make_d3(name: str | None, xc: str) -> Any:
    """The D3 term of a ``dispersion`` name and functional (None when off); raises on a bad name."""
    return None if parse_dispersion(name) is None else D3(name, xc=xc)


def _check_dispersion_task(model: Equiformer, dispersion: str | None) -> None:
    """D3 corrects a potential energy; a model whose energy is something else refuses it."""
    task = model_task(model)
    if task != "potential" and parse_dispersion(dispersion) is not None:
        raise ValueError(f"dispersion={dispersion!r} adds D3 to a potential energy; this model's energy is "
                         f"{task!r} (see its checkpoint metadata)")
