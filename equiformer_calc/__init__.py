"""equiformer-calc: the Equiformer equivariant graph-attention Transformer as an ASE calculator.

>>> from equiformer_calc import Equiformer, EquiformerCalculator
>>> atoms.calc = EquiformerCalculator()            # the shipped checkpoint
"""

import os as _os

# idle OpenMP threads sleep instead of spinning (see runtime.thread_policy): the OpenMP runtime
# reads this when torch is first imported, so it applies when equiformer_calc is imported before
# torch (the command line, the service); an explicit setting wins
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .calculator import EquiformerCalculator  # noqa: E402
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from .graph import Structure, StructureError  # noqa: E402
from .model import Equiformer, EquiformerConfig, UnknownElementError  # noqa: E402
from .predictor import Predictor  # noqa: E402

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
