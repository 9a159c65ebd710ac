"""equiformer-calc: the Equiformer equivariant graph-attention Transformer as an ASE calculator.

>>> from equiformer_calc import Equiformer, EquiformerCalculator
>>> atoms.calc = EquiformerCalculator()            # the shipped checkpoint

Every public name loads on first use (PEP 562), so ``import equiformer_calc`` and the command
line's ``--help`` do not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .runtime import default_openmp_env as _default_openmp_env

# the OpenMP wait policy (see runtime.default_openmp_env): idle threads spin briefly, then sleep,
# on a quiet machine, and sleep at once when another process is busy. The OpenMP runtime reads it
# when torch is first imported, and every submodule imports this package first, so it applies
# whenever equiformer_calc is imported before torch (the command line, the service, its worker);
# the user's own GOMP_SPINCOUNT or OMP_WAIT_POLICY wins
_default_openmp_env()

__version__ = "0.1.0"

#: public name -> module that defines it (relative to this package)
_EXPORTS: dict[str, str] = {
    "EquiformerCalculator": ".calculators.local",
    "CheckpointError": ".checkpoint",
    "load_checkpoint": ".checkpoint",
    "save_checkpoint": ".checkpoint",
    "BudgetError": ".graph",
    "Structure": ".graph",
    "StructureError": ".graph",
    "Equiformer": ".model",
    "EquiformerConfig": ".model",
    "UnknownElementError": ".model",
    "MemoryBudgetError": ".memory",
    "ModelSettings": ".calculators.settings",
    "Predictor": ".predictor",
    "relax": ".workflows",
    "relax_batch": ".workflows",
    "run_md": ".workflows",
    "screen_adsorbates": ".workflows",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .calculators.local import EquiformerCalculator
    from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from .graph import BudgetError, Structure, StructureError
    from .model import Equiformer, EquiformerConfig, UnknownElementError
    from .memory import MemoryBudgetError
    from .calculators.settings import ModelSettings
    from .predictor import Predictor
    from .workflows import relax, relax_batch, run_md, screen_adsorbates


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
