"""What the command-line modules share: THE structure-reading helper, the model / memory /
dispersion / Dask options, and the checks that run before a command writes anything.

Library code never imports this package (the import contract in pyproject.toml checks it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import Any

from ase import Atoms
from ase.calculators.calculator import Calculator

__all__ = [
    "read_structure",
    "check_structure",
    "output_stem",
    "add_model_arguments",
    "add_memory_argument",
    "add_dispersion_arguments",
    "add_executor_arguments",
    "executor_from_args",
]


def output_stem(output: str | os.PathLike) -> Path:
    """``run/out.traj`` -> ``run/out`` (side files are named ``<stem>_final.extxyz`` and so on);
    creates the folder."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_suffix("") if path.suffix else path


def add_model_arguments(parser: Any) -> None:
    """``--checkpoint``, ``--device``, ``--dtype`` for the workflow subcommands."""
    parser.add_argument(
        "--checkpoint", default=None, help="shipped checkpoint name or .safetensors path (default: pbe-distilled-small)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="model precision")
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


def add_dispersion_arguments(parser: Any) -> None:
    """``--dispersion`` and ``--xc`` for the subcommands that evaluate energies (serve, relax, md)."""
    parser.add_argument(
        "--dispersion", default=None, metavar="NAME",
        help="add Grimme's D3: d3bj, d3zero, d3bjm or d3zerom, optionally with -atm (needs the [d3] extra; default: none)",
    )
    parser.add_argument("--xc", default="pbe", help="functional whose D3 parameters to use (default: pbe)")


def add_executor_arguments(parser: argparse.ArgumentParser, workers_help: str | None = None) -> None:
    """``--scheduler``, ``--workers``, ``--torch-threads`` of the commands that fan out on Dask."""
    group = parser.add_argument_group("distributed (Dask; needs the [distributed] extra)")
    group.add_argument("--scheduler", metavar="ADDRESS", default=None,
                       help="run tasks on the Dask cluster of this scheduler, e.g. tcp://HOST:8786")
    group.add_argument("--workers", type=int, default=None, metavar="N",
                       help=workers_help or "run tasks on a local Dask cluster of N worker processes "
                       "(default: in this process)")
    group.add_argument("--torch-threads", type=int, default=None, metavar="T",
                       help="torch threads per worker (default: cores // N for --workers; the worker's "
                       "OMP_NUM_THREADS, 1 under Dask's nanny, for --scheduler)")


def executor_from_args(args: argparse.Namespace) -> contextlib.AbstractContextManager[Any]:
    """:func:`~equiformer_calc.distributed.open_executor` for the parsed
    :func:`add_executor_arguments` options."""
    from ..distributed import open_executor

    if args.scheduler is not None and args.workers is not None:
        raise ValueError("give --scheduler or --workers, not both")
    return open_executor(scheduler=args.scheduler, workers=args.workers, torch_threads=args.torch_threads)
