"""Simulation workflows on top of the calculator: relaxation, batched relaxation, molecular
dynamics and adsorbate screening (each also an ``equiformer-calc`` subcommand)."""

from .batch import relax_batch
from .md import MDResult, run_md
from .relax import RelaxResult, relax
from .screening import ScreenResult, screen_adsorbates

__all__ = ["MDResult", "RelaxResult", "ScreenResult", "relax", "relax_batch", "run_md", "screen_adsorbates"]
