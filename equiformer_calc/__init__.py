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
]
