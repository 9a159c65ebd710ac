"""Simulation workflows on top of the calculator: relaxation, batched relaxation, molecular
dynamics, adsorbate screening, vibrations, free energies and CHE schemes (``thermo``) and NEB
barriers (each also an ``equiformer-calc`` subcommand)."""

from .batch import relax_batch
from .md import MDResult, run_md
from .neb import NEBResult, run_neb
from .relax import RelaxResult, relax
from .screening import ScreenResult, screen_adsorbates
from .vibrations import VibrationResult, vibrate

__all__ = ["MDResult", "NEBResult", "RelaxResult", "ScreenResult", "VibrationResult", "relax", "relax_batch", "run_md",
           "run_neb", "screen_adsorbates", "vibrate"]
