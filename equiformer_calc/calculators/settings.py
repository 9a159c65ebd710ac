"""THE settings of one model evaluator: which checkpoint, on which device, in which precision, with
which memory rules, neighbour-list skin, D3 dispersion and uncertainty.

:class:`ModelSettings` is the one home of these settings: it validates them when it is made, and it
is the one path from settings to objects (:meth:`ModelSettings.predictor`, and
:meth:`EquiformerCalculator.from_settings <equiformer_calc.calculators.local.EquiformerCalculator.from_settings>`).
Everything that builds a model evaluator takes one instead of re-listing its fields: the ASE
calculator's keyword parameters make one, the command line's model options build one
(``cli/_common.settings_from_args``), the HTTP service is given one (or a predictor) and sends it to
its model worker as JSON (:meth:`ModelSettings.to_dict` / :meth:`ModelSettings.from_dict`), and the
workflows take a calculator, a predictor, a settings object or a checkpoint name, all resolved by
:func:`~equiformer_calc.calculators.local.resolve_calculator`.

A variant is :meth:`ModelSettings.replace` (``settings.replace(skin=1.0)``); the object itself is
frozen.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from dataclasses import dataclass, fields
from typing import Any, Mapping

from ..checkpoint import DEFAULT_CHECKPOINT, CheckpointError, load_checkpoint
from ..committee import attach_committee, resolve_uncertainty
from ..graph import DEFAULT_MIN_DISTANCE_RATIO
from ..integrations.d3 import D3, DispersionPredictor, parse_dispersion
from ..memory import resolve_limits, resolve_memory_mode
from ..model import Equiformer, model_task, resolve_dtype
from ..predictor import Predictor
from ..runtime import check_device

__all__ = ["ModelSettings", "PREDICTOR_FIELDS", "CALCULATOR_FIELDS"]

#: the fields :class:`~equiformer_calc.predictor.Predictor` takes as keywords
PREDICTOR_FIELDS = ("device", "dtype", "max_atoms_per_batch", "min_distance_ratio", "memory", "memory_budget",
                    "max_edges", "threads")
#: the fields that are :class:`~equiformer_calc.calculators.local.EquiformerCalculator` parameters
CALCULATOR_FIELDS = ("checkpoint", "checkpoint_sha256", "device", "dtype", "max_atoms_per_batch", "skin",
                     "min_distance_ratio", "dispersion", "xc", "memory", "uncertainty")


@dataclass(frozen=True)
class ModelSettings:
    """How to build one model evaluator (validated when made; a ``ValueError`` or ``TypeError``
    names the bad field and value).

    checkpoint: a shipped name or a ``.safetensors`` path (``None``: the default shipped
    checkpoint, ``pbe-distilled-small``); checkpoint_sha256: insist on exactly that file.
    device (``"cpu"``, ``"cuda[:N]"``, ``"mps"``: must exist on this machine), dtype
    (``"float32"`` or ``"float64"``). memory (one of :data:`~equiformer_calc.memory.MEMORY_MODES`),
    memory_budget (bytes, ``"auto"`` or None), max_edges, max_atoms_per_batch, min_distance_ratio,
    threads (``"auto"`` or None): the :class:`~equiformer_calc.predictor.Predictor`'s rules (see
    there). skin (A): the calculator's neighbour-list reuse (0: a fresh search every call; MD
    uses 1). dispersion (``"d3bj"``, ``"d3zero"``, ... or None) and xc: Grimme's D3 added to every
    result. uncertainty: ``"auto"``, ``"energy"``, ``"forces"`` or ``"off"`` (True = forces, False = off;
    see :mod:`equiformer_calc.committee`).
    """

    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    memory: str = "auto"
    memory_budget: int | str | None = "auto"
    max_edges: int | None = None
    max_atoms_per_batch: int = 2048
    min_distance_ratio: float = DEFAULT_MIN_DISTANCE_RATIO
    threads: str | None = "auto"
    skin: float = 0.0
    dispersion: str | None = None
    xc: str = "pbe"
    uncertainty: str | bool = "auto"

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise in place once, here
        checkpoint = self.checkpoint
        if isinstance(checkpoint, os.PathLike):
            checkpoint = os.fspath(checkpoint)
        if checkpoint is not None and (not isinstance(checkpoint, str) or not checkpoint.strip()):
            raise TypeError(f"checkpoint must be a shipped name or a path (or None for the default), got {checkpoint!r}")
        set_(self, "checkpoint", checkpoint)
        if self.checkpoint_sha256 is not None and not isinstance(self.checkpoint_sha256, str):
            raise TypeError(f"checkpoint_sha256 must be a hex digest string, got {self.checkpoint_sha256!r}")
        if not isinstance(self.device, str):
            set_(self, "device", str(self.device))  # a torch.device
        check_device(self.device)  # a device this machine lacks: a clear error now, not in the first call
        set_(self, "dtype", str(resolve_dtype(self.dtype)).replace("torch.", ""))
        resolve_memory_mode(self.memory)
        budget, max_edges = resolve_limits(self.memory_budget, self.max_edges)
        set_(self, "memory_budget", budget)
        set_(self, "max_edges", max_edges)
        set_(self, "max_atoms_per_batch", _number("max_atoms_per_batch", self.max_atoms_per_batch, int, minimum=1))
        set_(self, "min_distance_ratio", _number("min_distance_ratio", self.min_distance_ratio, float, minimum=0))
        set_(self, "skin", _number("skin", self.skin, float, minimum=0, unit=" Angstrom"))
        if self.threads not in ("auto", None):
            raise ValueError(f"threads must be 'auto' or None, got {self.threads!r}")
        parse_dispersion(self.dispersion)  # ValueError naming the accepted values
        if not isinstance(self.xc, str) or not self.xc:
            raise ValueError(f"xc must be a functional's name such as 'pbe', got {self.xc!r}")
        if not (isinstance(self.uncertainty, str) and self.uncertainty.lower() == "auto"):
            resolve_uncertainty(self.uncertainty)

    # ------------------------------------------------------------------ variants and the wire
    def replace(self, **changes: Any) -> "ModelSettings":
        """A copy with ``changes`` (validated like a new object): the way a caller asks for a
        variant, e.g. MD's ``settings.replace(skin=1.0)``."""
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise TypeError(f"ModelSettings has no field(s) {', '.join(map(repr, unknown))}; "
                            f"fields: {', '.join(self.field_names())}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def defaults(cls, names: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The default value of each field in ``names`` (all by default), without building an object."""
        found = {f.name: f.default for f in fields(cls)}
        return {name: found[name] for name in (names if names is not None else found)}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-serialisable (for the service's worker and logs)."""
        return {name: getattr(self, name) for name in self.field_names()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelSettings":
        """The inverse of :meth:`to_dict`; an unknown key is a ``TypeError`` naming it."""
        if not isinstance(data, Mapping):
            raise TypeError(f"ModelSettings.from_dict needs a mapping, got {type(data).__name__}")
        return cls().replace(**dict(data))

    @classmethod
    def of(cls, predictor: Any, **changes: Any) -> "ModelSettings":
        """The settings a :class:`~equiformer_calc.predictor.Predictor` (or a
        :class:`~equiformer_calc.integrations.d3.DispersionPredictor` over one) was built with,
        plus ``changes``: what rebuilds the same evaluator elsewhere (the service's worker)."""
        d3 = None
        if isinstance(predictor, DispersionPredictor):
            predictor, d3 = predictor.predictor, predictor.d3
        if not isinstance(predictor, Predictor):
            raise TypeError(f"ModelSettings.of needs a Predictor (or a DispersionPredictor over one), "
                            f"got {type(predictor).__name__}")
        info = predictor.model.checkpoint
        found: dict[str, Any] = {name: getattr(predictor, name) for name in PREDICTOR_FIELDS}
        found.update(
            device=str(predictor.device), dtype=str(predictor.dtype).replace("torch.", ""),
            checkpoint=(info.path or info.name) if info is not None else None,
            checkpoint_sha256=info.sha256 if info is not None else None,
            uncertainty=predictor.uncertainty,
            dispersion=d3.name if d3 is not None else None, xc=d3.xc if d3 is not None else "pbe",
        )
        found.update(changes)
        return cls(**found)

    # ------------------------------------------------------------------ building
    @property
    def checkpoint_name(self) -> str:
        """The checkpoint to load: ``checkpoint``, or the default shipped one."""
        return self.checkpoint or DEFAULT_CHECKPOINT

    def load_model(self) -> Equiformer:
        """The model of :attr:`checkpoint_name`, loaded onto ``device`` (checked against
        ``checkpoint_sha256``)."""
        return load_checkpoint(self.checkpoint_name, device=self.device)

    def check_model(self, model: Equiformer) -> None:
        """Refuse a model these settings do not fit: another file than ``checkpoint_sha256``, or
        D3 ``dispersion`` on a model whose energy is not a potential energy."""
        info = model.checkpoint
        sha256 = info.sha256 if info is not None else None
        if self.checkpoint_sha256 is not None and self.checkpoint_sha256 != sha256:
            name = self.checkpoint or (info.name if info is not None else None) or "in-memory model"
            raise CheckpointError(f"checkpoint {name!r} has sha256 {sha256}, not the checkpoint_sha256="
                                  f"{self.checkpoint_sha256!r} asked for")
        task = model_task(model)
        if task != "potential" and parse_dispersion(self.dispersion) is not None:
            raise ValueError(f"dispersion={self.dispersion!r} adds D3 to a potential energy; this model's energy is "
                             f"{task!r} (see its checkpoint metadata)")

    def predictor(self, model: Equiformer | None = None, copy_model: bool = True) -> Predictor:
        """THE constructor of a :class:`~equiformer_calc.predictor.Predictor` from settings: the
        checkpoint's model (or ``model``: copied unless ``copy_model=False``), this device, dtype and
        memory rules, and the committee that ``uncertainty`` asks for. D3 is not part of a
        predictor: see :meth:`with_dispersion`."""
        owned = model is None
        if model is None:
            model = self.load_model()
        if not isinstance(model, Equiformer):
            raise TypeError(f"ModelSettings.predictor needs an Equiformer model, got {type(model).__name__}")
        self.check_model(model)
        predictor = Predictor(model, **{name: getattr(self, name) for name in PREDICTOR_FIELDS},
                              copy_model=copy_model and not owned)
        attach_committee(predictor, self.uncertainty)
        return predictor

    def dispersion_term(self) -> D3 | None:
        """The :class:`~equiformer_calc.integrations.d3.D3` term of ``dispersion`` / ``xc`` (None
        when off); checks the functional and that the D3 library is installed."""
        return None if parse_dispersion(self.dispersion) is None else D3(str(self.dispersion), xc=self.xc)

    def with_dispersion(self, predictor: Any) -> Any:
        """``predictor`` with the D3 term of these settings added to its results (a
        :class:`~equiformer_calc.integrations.d3.DispersionPredictor`), or as is when ``dispersion`` is off."""
        d3 = self.dispersion_term()
        return predictor if d3 is None else DispersionPredictor(predictor, d3)


def _number(name: str, value: Any, kind: type, minimum: float, unit: str = "") -> Any:
    """``value`` as ``kind`` if it is a finite real number (an integral one for int) >= ``minimum``,
    else a ValueError naming ``name``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value and abs(value) != float("inf")
    if ok and kind is int:
        ok = float(value).is_integer()
    if not ok:
        what = "an integer" if kind is int else "a finite number"
        raise ValueError(f"{name} must be {what} >= {minimum:g}{unit}, got {value!r}")
    if not value >= minimum:
        raise ValueError(f"{name} must be >= {minimum:g}{unit}, got {value}")
    return kind(value)
