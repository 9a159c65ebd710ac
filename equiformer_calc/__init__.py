"""equiformer-calc: the Equiformer equivariant graph-attention Transformer as an ASE calculator.

>>> from equiformer_calc import Equiformer, EquiformerCalculator
>>> atoms.calc = EquiformerCalculator()            # the shipped checkpoint
"""

from .calculator import EquiformerCalculator
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .graph import Structure, StructureError
from .model import Equiformer, EquiformerConfig, UnknownElementError
from .predictor import Predictor

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "Equiformer", "EquiformerCalculator", "EquiformerConfig", "Predictor", "Structure",
    "StructureError", "UnknownElementError", "load_checkpoint", "save_checkpoint",
    "relax", "relax_batch", "run_md", "screen_adsorbates",
]

_WORKFLOWS = ("relax", "relax_batch", "run_md", "screen_adsorbates")


def __getattr__(name: str):  # the workflows (and ASE's optimizers, MD, pymatgen) load on first use
    if name in _WORKFLOWS:
        from . import workflows

        return getattr(workflows, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
