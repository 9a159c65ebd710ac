"""ASE calculator over the batched :class:`~equiformer_calc.predictor.Predictor`."""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError

from .base import EquiformerCalculatorBase, reject_unknown_keywords
from ..graph import DEFAULT_MIN_DISTANCE_RATIO, NeighborListCache
from ..integrations.d3 import DispersionPredictor, parse_dispersion
from ..model import Equiformer
from ..predictor import Predictor, model_task, not_a_potential_message
from .settings import CALCULATOR_FIELDS, PREDICTOR_FIELDS, ModelSettings

__all__ = ["EquiformerCalculator", "ModelSettings", "resolve_calculator"]

log = logging.getLogger(__name__)

#: the settings a built predictor fixes (a calculator over it cannot change them)
_PREDICTORS_OWN = frozenset({*PREDICTOR_FIELDS, "checkpoint", "checkpoint_sha256", "uncertainty"})

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
    #: the defaults are ModelSettings' (tests/calculators/test_settings.py checks the signature's equal them)
    default_parameters: dict[str, Any] = ModelSettings.defaults(CALCULATOR_FIELDS)
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
        # the keywords make a ModelSettings (validated there, the one place), and it builds the predictor
        settings = ModelSettings(
            checkpoint=checkpoint, checkpoint_sha256=checkpoint_sha256, device=device, dtype=dtype,
            max_atoms_per_batch=max_atoms_per_batch, skin=skin, min_distance_ratio=min_distance_ratio,
            dispersion=dispersion, xc=xc, memory=memory, uncertainty=uncertainty,
        )
        settings.dispersion_term()  # the names, the functional and the library, before any weights load
        self._attach(settings, settings.predictor(model))

    @classmethod
    def from_settings(cls, settings: ModelSettings, model: Equiformer | None = None) -> "EquiformerCalculator":
        """The calculator of a :class:`~equiformer_calc.calculators.settings.ModelSettings` (its
        checkpoint, or ``model``: a copy of it), every field honoured (also the predictor's
        ``memory_budget``, ``max_edges`` and ``threads``, which are not keyword parameters)."""
        if not isinstance(settings, ModelSettings):
            raise TypeError(f"from_settings needs a ModelSettings, got {type(settings).__name__}")
        settings.dispersion_term()
        return cls._around(settings, settings.predictor(model))

    @classmethod
    def from_predictor(cls, predictor: Any, **changes: Any) -> "EquiformerCalculator":
        """A calculator over an existing :class:`~equiformer_calc.predictor.Predictor` (shared,
        not copied), or over a :class:`~equiformer_calc.integrations.d3.DispersionPredictor` (its
        D3 becomes the calculator's ``dispersion``); ``changes``: calculator settings such as ``skin``."""
        fixed = sorted(set(changes) & _PREDICTORS_OWN)
        if fixed:
            raise ValueError(f"{', '.join(fixed)} belong to the predictor given: build it with the settings wanted "
                             f"(ModelSettings(...).predictor()) instead")
        settings = ModelSettings.of(predictor, **changes)
        settings.dispersion_term()
        inner = predictor.predictor if isinstance(predictor, DispersionPredictor) else predictor
        return cls._around(settings, inner)

    @classmethod
    def _around(cls, settings: ModelSettings, predictor: Predictor) -> "EquiformerCalculator":
        calc = cls.__new__(cls)
        EquiformerCalculatorBase.__init__(calc)
        calc._attach(settings, predictor)
        return calc

    def _attach(self, settings: ModelSettings, predictor: Predictor) -> None:
        """Record ``settings`` as the ASE parameters and take ``predictor`` (built from them)."""
        self.predictor = predictor
        info = predictor.model.checkpoint
        self.parameters.update({key: getattr(settings, key) for key in CALCULATOR_FIELDS})
        self.parameters.update(checkpoint=settings.checkpoint or (info.name if info is not None else None),
                               checkpoint_sha256=info.sha256 if info is not None else None)
        self._d3: Any = None
        self.neighbor_cache: NeighborListCache | None = None
        self._set_skin(self.parameters["skin"])

    @property
    def settings(self) -> ModelSettings:
        """This calculator's :class:`~equiformer_calc.calculators.settings.ModelSettings` (the
        current parameters and the predictor's memory rules): ``calc.settings.replace(...)`` is the
        way to a similar calculator."""
        return self._settings(**self._predictor_rules())

    def _predictor_rules(self) -> dict[str, Any]:
        """The predictor's settings that are not keyword parameters (kept through pickling)."""
        return {"memory_budget": self.predictor.memory_budget, "max_edges": self.predictor.max_edges,
                "threads": self.predictor.threads}

    @property
    def model(self) -> Equiformer:
        return self.predictor.model

    def set(self, **kwargs: Any) -> dict[str, Any]:
        """Change settable parameters (``memory``, ``dispersion``, ``xc``, ``skin``,
        ``min_distance_ratio``, ``max_atoms_per_batch``): each new value is validated (by
        :class:`~equiformer_calc.calculators.settings.ModelSettings`) before anything changes, and
        a change of what the numbers depend on drops old results."""
        trial = {k: v for k, v in kwargs.items() if k in self.settable}
        if trial:
            settings = self.settings.replace(**trial)  # raises on a bad value
            if {"dispersion", "xc"} & set(trial):
                settings.dispersion_term()
                settings.check_model(self.model)
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
        if parse_dispersion(name) is None:
            return None
        if self._d3 is None or (self._d3.name, self._d3.xc) != (str(name).lower(), str(xc).lower()):
            self._d3 = self._settings().dispersion_term()
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
        state["_predictor_rules"] = self._predictor_rules()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from safetensors.torch import load

        config = state.pop("_config")
        weights = load(state.pop("_weights"))
        info = state.pop("_checkpoint")
        limits = state.pop("_predictor_rules", {})
        self.__dict__.update(state)
        self.atoms = None
        self.results = {}
        self._d3 = None
        model = Equiformer.from_config(config)
        model.load_state_dict(weights)
        model.checkpoint = info
        self.predictor = self._settings(**limits).predictor(model, copy_model=False)

    def _settings(self, **predictor_rules: Any) -> ModelSettings:
        p = self.parameters
        return ModelSettings(**{key: p[key] for key in CALCULATOR_FIELDS if key in p}, **predictor_rules)


#: what :func:`resolve_calculator` accepts, for its error message
_ACCEPTED = ("an ASE calculator (or an object with its get_property, or a batched predict), a Predictor, a ModelSettings, an Equiformer model, a checkpoint name or path, "
             "or None (the default shipped checkpoint)")


def resolve_calculator(calculator: Any = None, **defaults: Any) -> Calculator:
    """THE way a workflow gets its calculator from what the caller gave as ``calculator``:

    * an ASE calculator (any: EMT, a remote one, an :class:`EquiformerCalculator`), or an object with
      a calculator's methods (a batched ``predict``, or ASE's ``get_property``): used as is;
    * a :class:`~equiformer_calc.calculators.settings.ModelSettings`: its calculator, exactly as set;
    * a :class:`~equiformer_calc.predictor.Predictor` (or a D3 ``DispersionPredictor`` over one):
      a calculator sharing it (no copy of the model);
    * a checkpoint name or path (str or ``os.PathLike``), or ``None`` for the default shipped checkpoint:
      a calculator of ``ModelSettings(checkpoint=...)``;
    * an :class:`~equiformer_calc.model.Equiformer`: a calculator over a copy of it.

    ``defaults``: settings the workflow prefers where it builds the settings itself (a name,
    None, a model; for a predictor only the calculator-level ones such as ``skin``), e.g. MD's ``skin=1.0``;
    a calculator or a ModelSettings given by the caller is never changed. Anything else is a
    ``TypeError`` naming what was given and what is accepted."""
    if isinstance(calculator, Calculator):
        return calculator
    if isinstance(calculator, ModelSettings):
        return EquiformerCalculator.from_settings(calculator)
    if isinstance(calculator, (Predictor, DispersionPredictor)):  # its own settings win over the defaults
        calc_level = {k: v for k, v in defaults.items() if k not in _PREDICTORS_OWN}
        return EquiformerCalculator.from_predictor(calculator, **calc_level)
    if any(callable(getattr(calculator, name, None)) for name in ("predict", "get_property")):
        return calculator  # a calculator by its methods (batched ``predict`` or ASE's interface)
    if isinstance(calculator, Equiformer):
        return EquiformerCalculator.from_settings(ModelSettings(**defaults), model=calculator)
    if calculator is None or isinstance(calculator, (str, os.PathLike)):
        checkpoint = None if calculator is None else os.fspath(calculator)
        return EquiformerCalculator.from_settings(ModelSettings(checkpoint=checkpoint, **defaults))
    raise TypeError(f"calculator must be {_ACCEPTED}; got {type(calculator).__name__} {calculator!r:.80}")
