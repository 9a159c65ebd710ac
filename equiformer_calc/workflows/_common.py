"""Helpers shared by the workflows: the calculator to use (every workflow's ``calculator=`` goes
through :func:`~equiformer_calc.calculators.local.resolve_calculator`, re-exported here), line
plots, a lazily created trajectory. Bottom-layer constraints live in :mod:`equiformer_calc.surfaces.slabs`, file writing in
:mod:`equiformer_calc.io` (both imported here for the workflows); reading structures from files
and command-line options are :mod:`equiformer_calc.cli`'s."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from ase import Atoms
from ..calculators.local import resolve_calculator
from ..calculators.settings import ModelSettings
from ..io import new_figure, save_figure, write_csv
from ..surfaces.slabs import add_fix_bottom, bottom_fixed_mask, fixed_mask, layer_indices

__all__ = [
    "resolve_calculator",
    "ModelSettings",
    "layer_indices",
    "bottom_fixed_mask",
    "add_fix_bottom",
    "fixed_mask",
    "write_csv",
    "plot_lines",
    "LazyTrajectory",
    "check_number",
    "check_not_all_fixed",
]

log = logging.getLogger(__name__)


def check_number(name: str, value: Any, *, gt: float | None = None, ge: float | None = None,
                 integer: bool = False) -> None:
    """Raise a ValueError naming ``name`` and ``value`` unless ``value`` is a finite number (an
    integer with ``integer``) that is ``> gt`` / ``>= ge``: the workflows' argument checks, so
    that ``fmax=-1`` or ``temperature=-10`` is refused instead of run."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value).is_integer()
    if ok:
        ok = bool(np.isfinite(value)) and (gt is None or value > gt) and (ge is None or value >= ge)
    if not ok:
        bound = f" > {gt:g}" if gt is not None else f" >= {ge:g}" if ge is not None else ""
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{name} must be {kind}{bound}, got {value!r}")


def check_not_all_fixed(atoms: Atoms, fix_bottom: int | None, fix_below: float | None, what: str) -> None:
    """Refuse settings that would hold every atom fixed (``what`` then does nothing): a
    ``fix_bottom`` of at least the structure's number of atomic layers (see
    :func:`layer_indices`), or constraints plus ``fix_below`` that cover all atoms."""
    if fix_bottom is not None and len(atoms):
        layers = int(layer_indices(atoms.positions[:, 2]).max()) + 1
        if not isinstance(fix_bottom, bool) and isinstance(fix_bottom, (int, np.integer)) and fix_bottom >= layers:
            raise ValueError(f"fix_bottom={fix_bottom} would fix every atom: the structure has {layers} atomic "
                             f"layer(s), so give fewer than {layers}")
    if len(atoms) and (bottom_fixed_mask(atoms, fix_bottom, fix_below) | fixed_mask(atoms)).all():
        raise ValueError(f"every atom is fixed (fix_bottom={fix_bottom}, fix_below={fix_below} and the "
                         f"structure's own constraints): {what} would not move anything")


def plot_lines(
    path: str | os.PathLike,
    x: Sequence[float] | np.ndarray,
    panels: Sequence[Mapping[str, Sequence[float] | np.ndarray]],
    xlabel: str,
    ylabels: Sequence[str],
    title: str = "",
) -> Path:
    """One PNG with one panel per mapping ``{legend: y values}``, stacked, sharing the x axis."""
    fig = new_figure((6.4, 2.6 * len(panels) + 0.6))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, series, ylabel in zip(axes, panels, ylabels):
        for label, y in series.items():
            ax.plot(x, y, label=label, lw=1.2, marker="." if len(x) < 60 else None)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize="small")
    axes[-1].set_xlabel(xlabel)
    if title:
        axes[0].set_title(title, fontsize="medium")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


class LazyTrajectory:
    """An ASE trajectory writer that creates its file at the first frame, so a run that fails
    before its first step leaves no empty file behind."""

    def __init__(self, path: str | os.PathLike, atoms: Atoms | None = None) -> None:
        self.path = Path(path)
        self.atoms = atoms
        self._writer: Any = None

    def write(self, atoms: Atoms | None = None, **kwargs: Any) -> None:
        if self._writer is None:
            from ase.io.trajectory import Trajectory

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = Trajectory(str(self.path), "w", self.atoms)
        self._writer.write(atoms, **kwargs)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
