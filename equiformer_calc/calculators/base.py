"""What every calculator of this package shares with ASE's protocol (no torch here: the remote
calculator imports it too).

:class:`EquiformerCalculatorBase` is the one ``calculate()`` of the local
(:class:`~equiformer_calc.calculators.local.EquiformerCalculator`) and the remote
(:class:`~equiformer_calc.service.client.RemoteEquiformerCalculator`) calculator: it applies the
periodicity rule (stress only for systems periodic in 3D) and takes ``predict([atoms])[0]``. A
subclass supplies ``predict`` (many structures, one dict of numpy arrays each) and keeps its
settings in ASE's ``parameters`` (``default_parameters`` names them all), so ``todict()``, ``ase db``
rows and trajectories record them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

__all__ = ["ASE_BASE_KEYWORDS", "EquiformerCalculatorBase", "reject_unknown_keywords", "model_fingerprint"]

#: keywords of ASE's ``Calculator.__init__`` that our calculators pass through
ASE_BASE_KEYWORDS = ("restart", "ignore_bad_restart_file", "label", "atoms", "directory")


def reject_unknown_keywords(owner: str, given: dict[str, Any], accepted: Sequence[str]) -> None:
    """``TypeError`` naming the keywords of ``given`` not in ``accepted`` (nor ASE's base ones).

    ASE's base class files unknown keywords under ``parameters`` and ignores them, so a misspelled
    ``chekpoint=`` or an unsupported ``dispersion=`` would silently do nothing."""
    unknown = sorted(set(given) - set(accepted) - set(ASE_BASE_KEYWORDS))
    if unknown:
        raise TypeError(
            f"{owner} got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(list(accepted) + list(ASE_BASE_KEYWORDS))}"
        )


class EquiformerCalculatorBase(Calculator):
    """The ASE side of an Equiformer calculator: ``calculate()`` over the subclass's ``predict``.

    Subclasses define ``keywords`` (THE list of constructor keywords besides ASE's base ones; a
    test checks it against the signature), ``default_parameters`` (every setting, recorded by
    ``todict()``), ``settable`` (the parameters :meth:`set` may change after construction; the
    others are fixed when the calculator is built) and ``predict(structures, properties)``.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]
    #: constructor keywords besides ASE's base ones (anything else is a TypeError)
    keywords: tuple[str, ...] = ()
    #: the parameters that :meth:`set` may change on a built calculator
    settable: tuple[str, ...] = ()

    def predict(self, structures: Sequence[Atoms], properties: Sequence[str] = ("energy", "forces")) -> list[dict]:
        """Energies (and forces, stress...) of many structures: one dict per structure, in order."""
        raise NotImplementedError

    def calculation_properties(self, properties: Sequence[str], periodic: bool) -> list[str]:
        """What one ``calculate()`` asks of ``predict`` when ASE wants ``properties``: energy,
        forces and per-atom energies, and stress for a system periodic in 3D (ASE caches them all,
        so an optimiser's next ``get_forces`` is free)."""
        return ["energy", "forces", "energies"] + (["stress"] if periodic else [])

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        assert self.atoms is not None
        periodic = bool(self.atoms.pbc.all())
        wanted = self.calculation_properties(properties, periodic)
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError(
                f"stress is only defined for systems periodic in all three directions (pbc={self.atoms.pbc.tolist()})"
            )
        result = self.predict([self.atoms], wanted)[0]
        self.results = {k: (v if k in ("energy", "free_energy") else np.asarray(v)) for k, v in result.items()}

    def set(self, **kwargs: Any) -> dict[str, Any]:
        """Change settable parameters (see ``settable``); returns the changed ones. An unknown
        name is a ``TypeError``; a new value of a fixed parameter (say ``dtype``) a
        ``ValueError``: build a new calculator for that."""
        unknown = sorted(set(kwargs) - set(self.default_parameters))
        if unknown:
            raise TypeError(f"{type(self).__name__}.set() got unknown parameter(s) {', '.join(map(repr, unknown))}; "
                            f"parameters: {', '.join(self.default_parameters)}")
        fixed = sorted(k for k, v in kwargs.items()
                       if k not in self.settable and k in self.parameters and _differs(self.parameters[k], v))
        if fixed:
            raise ValueError(f"{', '.join(fixed)} cannot be changed on a built {type(self).__name__} (settable: "
                             f"{', '.join(self.settable) or 'none'}); build a new calculator instead")
        return super().set(**kwargs)

    def todict(self, skip_default: bool = False) -> dict[str, Any]:
        """The settings (``parameters``), defaults included: a record of which model and settings
        made the numbers (``ase db`` rows and trajectories store it)."""
        return super().todict(skip_default=skip_default)


def _differs(old: Any, new: Any) -> bool:
    try:
        return bool(old != new)
    except (TypeError, ValueError):
        return True


def model_fingerprint(calc: Any) -> dict[str, str]:
    """THE identity of a calculator's model: ``{"model": name, "model_hash": 16 hex digits}``, the
    hash over the architecture config, every weight (as float64 bytes, so a model's hash does not
    depend on the precision it was loaded in), the calculator's ``dtype`` and its D3 term. The
    screening database records it (resuming with another model is refused) and the distributed
    executor names a registered model by it (``distributed.model_key`` adds the device). A
    calculator without a ``model`` (another program's) is named by its class."""
    model = getattr(calc, "model", None)
    if model is None:
        return {"model": type(calc).__name__, "model_hash": type(calc).__name__}
    h = hashlib.sha256()
    h.update(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().double().numpy().tobytes())
    h.update(str(calc.parameters.get("dtype", "")).encode())
    if getattr(calc, "dispersion_term", None) is not None:
        h.update(repr(calc.dispersion_term).encode())
    info = getattr(model, "checkpoint", None)
    name = info.name if info is not None else None
    return {"model": name or "in-memory model", "model_hash": h.hexdigest()[:16]}
