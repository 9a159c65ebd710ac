"""Helpers shared by the workflows: the calculator to use, output file names, PNG plots, structure
reading. Bottom-layer constraints live in :mod:`equiformer_calc.surfaces.slabs`, file writing in
:mod:`equiformer_calc.io` (both imported here for the workflows)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ..io import new_figure, save_figure, write_csv
from ..surfaces.slabs import add_fix_bottom, bottom_fixed_mask, fixed_mask, layer_indices

__all__ = [
    "resolve_calculator",
    "layer_indices",
    "bottom_fixed_mask",
    "add_fix_bottom",
    "fixed_mask",
    "output_stem",
    "write_csv",
    "plot_lines",
    "add_memory_argument",
    "add_model_arguments",
    "read_structure",
    "LazyTrajectory",
    "check_structure",
]

log = logging.getLogger(__name__)


def resolve_calculator(
    calculator: Calculator | None = None,
    checkpoint: str | os.PathLike | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    skin: float = 0.0,
    dispersion: str | None = None,
    xc: str = "pbe",
    memory: str = "auto",
) -> Calculator:
    """``calculator`` if given, else an :class:`~equiformer_calc.EquiformerCalculator` for
    ``checkpoint`` (a shipped name or a path; ``None``: the default shipped checkpoint), with D3
    ``dispersion`` for ``xc`` when given and memory mode ``memory``."""
    if calculator is not None:
        if checkpoint is not None:
            raise ValueError("give either calculator or checkpoint, not both")
        return calculator
    from ..calculator import EquiformerCalculator

    return EquiformerCalculator(
        checkpoint=None if checkpoint is None else str(checkpoint), device=device, dtype=dtype, skin=skin,
        dispersion=dispersion, xc=xc, memory=memory,
    )


def output_stem(output: str | os.PathLike) -> Path:
    """``run/out.traj`` -> ``run/out`` (side files are named ``<stem>_final.extxyz`` and so on);
    creates the folder."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_suffix("") if path.suffix else path


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


def add_model_arguments(parser: Any) -> None:
    """``--checkpoint``, ``--device``, ``--dtype`` for the workflow subcommands."""
    parser.add_argument(
        "--checkpoint", default=None, help="shipped checkpoint name or .safetensors path (default: pbe-distilled-small)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="model precision")
    from ..calculators.dispersion import add_dispersion_arguments

    add_dispersion_arguments(parser)


def add_memory_argument(parser: Any) -> None:
    """``--memory auto|fast|low`` for the subcommands that may see large systems (relax, md)."""
    parser.add_argument(
        "--memory", default="auto", choices=["auto", "fast", "low"],
        help="memory mode: 'low' evaluates large systems in a fraction of the memory (same numbers, ~1.3x the "
        "time); 'auto' (default) switches to it when 'fast' would not fit in the available memory",
    )


def read_structure(path: str | os.PathLike, index: str | int = -1, format: str | None = None) -> Atoms:
    """One structure from a file in any ASE-readable format: frame ``index`` (an int, or a string
    such as ``"-1"``). Errors are clear ``FileNotFoundError`` / ``ValueError`` naming the file and,
    for an index out of range, how many frames it has."""
    from ase.io import iread, read

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input file {str(path)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"input {str(path)!r} is a folder, not a structure file")
    text = str(index).strip()
    try:
        position = int(text)
    except ValueError:
        raise ValueError(f"--index must be a frame number such as 0 or -1, got {text!r}") from None
    try:
        atoms = read(str(path), index=position, format=format)
    except (StopIteration, IndexError):
        try:
            count = sum(1 for _ in iread(str(path), format=format))
        except Exception:  # noqa: BLE001 - only for the message
            count = "?"
        raise ValueError(f"--index {position} is out of range: {path} has {count} frame(s)") from None
    except Exception as exc:  # noqa: BLE001 - ASE raises many types for unreadable files
        raise ValueError(f"could not read {path} ({type(exc).__name__}: {' '.join(str(exc).split())}); "
                         f"check the file or give --format") from None
    if not isinstance(atoms, Atoms) or len(atoms) == 0:
        raise ValueError(f"{path} frame {position} holds no atoms")
    return atoms


def check_structure(atoms: Atoms, calculator: Calculator) -> None:
    """Evaluate ``atoms`` once with ``calculator`` (the result stays cached in it), so that an
    unsupported element, a bad geometry or an over-budget structure fails before any file is
    written."""
    probe = atoms.copy()
    probe.calc = calculator
    probe.get_potential_energy()


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
