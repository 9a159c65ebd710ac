"""What the command-line modules share: THE structure-reading helper, the model / memory /
dispersion / Dask options (and the one :class:`~equiformer_calc.calculators.settings.ModelSettings`
they make, :func:`settings_from_args`), the checks that run before a command writes anything (range-checked
numbers, an available device, outputs that are not inputs), and the names the options offer.

Library code never imports this package (the import contract in pyproject.toml checks it).

Every subcommand answers ``--help`` without importing torch, ASE's optimizers or the workflows
(tests/cli/test_help.py times it): a subcommand module imports only this module and the standard
library at its top, and the library inside ``run``. The option names below (optimizers,
ensembles, ...) mirror the library's tables for that reason; tests/cli/test_help.py checks that
they are equal.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:  # pragma: no cover
    from ase import Atoms
    from ase.calculators.calculator import Calculator

__all__ = [
    "read_structure",
    "check_structure",
    "check_outputs",
    "output_stem",
    "trajectory_output",
    "start_trajectory_run",
    "error_line",
    "number",
    "POSITIVE_FLOAT",
    "NONNEGATIVE_FLOAT",
    "FINITE_FLOAT",
    "POSITIVE_INT",
    "NONNEGATIVE_INT",
    "device_type",
    "DEFAULT_CHECKPOINT",
    "OPTIMIZER_NAMES",
    "ENSEMBLE_NAMES",
    "add_model_arguments",
    "add_memory_argument",
    "add_fix_arguments",
    "calculator_from_args",
    "settings_from_args",
    "add_dispersion_arguments",
    "add_executor_arguments",
    "executor_from_args",
]


#: checkpoint.DEFAULT_CHECKPOINT: the model a command uses without --checkpoint
DEFAULT_CHECKPOINT = "pbe-distilled-small"
#: ASE optimizers of workflows.relax.OPTIMIZERS (relax, screen, adsorbml)
OPTIMIZER_NAMES: tuple[str, ...] = ("BFGS", "FIRE", "LBFGS")
#: ensembles of workflows.md.ENSEMBLES
ENSEMBLE_NAMES: tuple[str, ...] = ("nve", "nvt")


# ------------------------------------------------------------------------------------ numbers
def number(kind: type = float, *, gt: float | None = None, ge: float | None = None,
           le: float | None = None) -> Callable[[str], Any]:
    """An argparse ``type`` that parses a finite ``kind`` (int or float) and checks its range:
    ``> gt``, ``>= ge``, ``<= le``. A value out of range is argparse's one-line error, e.g.
    ``equiformer-calc relax: error: argument --fmax: must be > 0, got -1``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if gt is not None and not value > gt:
            raise argparse.ArgumentTypeError(f"must be > {gt:g}, got {text}")
        if ge is not None and not value >= ge:
            raise argparse.ArgumentTypeError(f"must be >= {ge:g}, got {text}")
        if le is not None and not value <= le:
            raise argparse.ArgumentTypeError(f"must be <= {le:g}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE_FLOAT = number(float, gt=0)
NONNEGATIVE_FLOAT = number(float, ge=0)
FINITE_FLOAT = number(float)
POSITIVE_INT = number(int, ge=1)
NONNEGATIVE_INT = number(int, ge=0)


def device_type(text: str) -> str:
    """An argparse ``type`` for ``--device``: the name, if this machine has that device. ``cpu``
    is accepted without importing torch; anything else asks torch, and a device this build or
    machine lacks is a one-line error saying so (not a crash in the first model call)."""
    name = text.strip()
    if name == "cpu":
        return name
    from ..runtime import DeviceUnavailableError, check_device

    try:
        check_device(name)
    except DeviceUnavailableError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("; use cpu", "; use --device cpu")) from None
    return name


def error_line(command: str, message: str) -> None:
    """Write ``equiformer-calc COMMAND: error: MESSAGE`` to stderr: the command line's one error
    format, for a command that ends with a failure that is not an exception (some structures or
    tasks failed, the rest were written)."""
    import sys

    sys.stderr.write(f"equiformer-calc {command}: error: {' '.join(message.split())}\n")


# ------------------------------------------------------------------------------------ outputs
def check_outputs(outputs: Iterable[str | os.PathLike | None], inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse to write over an input: raise :class:`~equiformer_calc.io.OutputIsInputError` if an
    output path is one of the input files (the same file after resolving ``..`` and symlinks, or a
    hard link to it). An output may be a pattern such as ``out/parity_*.png`` (the files a command
    writes into a folder); ``None`` entries are skipped. Call it before anything is written."""
    from fnmatch import fnmatch

    from ..io import OutputIsInputError, same_file

    given = [Path(p) for p in inputs if p is not None and str(p)]
    for out in outputs:
        if out is None:
            continue
        out = Path(out)
        for source in given:
            if "*" in out.name:
                clash = (source.exists() and source.resolve().parent == out.parent.resolve()
                         and fnmatch(source.resolve().name, out.name))
                shown = source
            else:
                clash = same_file(out, source)
                shown = out
            if clash:
                detail = "" if str(shown) == str(source) else f" ({source} is the same file)"
                raise OutputIsInputError(f"output {shown} would overwrite the input {source}{detail}: "
                                         f"choose another output path")


def output_stem(output: str | os.PathLike) -> Path:
    """``run/out.traj`` -> ``run/out`` (side files are named ``<stem>_final.extxyz`` and so on);
    creates the folder."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_suffix("") if path.suffix else path


def trajectory_output(input: str, output: str | None, tag: str) -> tuple[str, Path, Path]:
    """(output, side-file stem, trajectory) of relax/md: ``-o`` or ``<input stem>_<tag>.traj``; the
    trajectory is ``output`` if it ends in ``.traj``, else ``<stem>.traj``."""
    output = output or f"{Path(input).stem or Path(input).name}_{tag}.traj"
    stem = Path(output).with_suffix("") if Path(output).suffix else Path(output)
    traj = Path(output) if Path(output).suffix == ".traj" else stem.with_name(stem.name + ".traj")
    return output, stem, traj


def start_trajectory_run(args: argparse.Namespace, tag: str,
                         side_files: Callable[[Path], dict[str, Path]]) -> tuple[Path, Path, Atoms, Any]:
    """The common start of relax and md: outputs named (:func:`trajectory_output`, ``side_files(stem)``:
    the CSV/PNG next to the trajectory) and checked, the input read, the calculator built
    (:func:`calculator_from_args`) and the structure checked against it, then the
    output folder made: every input error surfaces before anything is written. Returns (side-file
    stem, trajectory, atoms, calculator)."""
    output, stem, traj = trajectory_output(args.input, args.output, tag)
    check_outputs([traj, *side_files(stem).values()], [args.input, args.checkpoint])
    atoms = read_structure(args.input, args.index, args.format)
    calc = calculator_from_args(args)
    check_structure(atoms, calc)
    output_stem(output)  # creates the folder
    return stem, traj, atoms, calc


def add_model_arguments(parser: Any, dtype: str = "float32") -> None:
    """``--checkpoint``, ``--device``, ``--dtype`` (default ``dtype``), ``--dispersion``, ``--xc``: the
    model options of every subcommand that evaluates a model (:func:`settings_from_args` reads them)."""
    parser.add_argument(
        "--checkpoint", default=None, help="shipped checkpoint name or .safetensors path (default: pbe-distilled-small)"
    )
    parser.add_argument("--device", default="cpu", type=device_type, help="torch device (default: cpu)")
    parser.add_argument("--dtype", default=dtype, choices=["float32", "float64"],
                        help="model precision" + ("" if dtype == "float32" else f" (default {dtype})"))
    add_dispersion_arguments(parser)


def add_memory_argument(parser: Any, more_help: str = "") -> None:
    """``--memory auto|fast|low`` for the subcommands that may see large systems (relax, md, serve)."""
    parser.add_argument(
        "--memory", default="auto", choices=["auto", "fast", "low"],
        help="memory mode: 'low' evaluates large systems in a fraction of the memory (same numbers, ~1.3x the "
        "time); 'auto' (default) switches to it when 'fast' would not fit in the available memory" + more_help,
    )


def add_fix_arguments(parser: Any) -> None:
    """``--fix-bottom K`` and ``--fix-below Z`` (constraints of relax and md)."""
    parser.add_argument("--fix-bottom", type=NONNEGATIVE_INT, default=None, metavar="K",
                        help="fix the K lowest atomic layers (fewer than the structure has)")
    parser.add_argument("--fix-below", type=FINITE_FLOAT, default=None, metavar="Z", help="fix atoms with z < Z (A)")


#: the parsed options that are fields of ModelSettings (read when the verb declared them)
_MODEL_OPTIONS = ("checkpoint", "device", "dtype", "dispersion", "xc", "memory", "skin")


def settings_from_args(args: argparse.Namespace, **fields: Any) -> Any:
    """THE :class:`~equiformer_calc.calculators.settings.ModelSettings` of a command's model options:
    :func:`add_model_arguments`' (checkpoint, device, dtype, D3 dispersion and xc), ``--memory`` and
    ``--skin`` where the verb declares them, and ``fields`` (other settings, e.g. serve's
    ``memory_budget``). Invalid values raise the settings' ValueError naming the field."""
    from ..calculators.settings import ModelSettings

    given = {name: getattr(args, name) for name in _MODEL_OPTIONS if hasattr(args, name)}
    return ModelSettings(**{**given, **fields})


def calculator_from_args(args: argparse.Namespace, **fields: Any) -> Any:
    """The :class:`~equiformer_calc.EquiformerCalculator` of :func:`settings_from_args`."""
    from ..calculators.local import EquiformerCalculator

    return EquiformerCalculator.from_settings(settings_from_args(args, **fields))


def read_structure(path: str | os.PathLike, index: str | int = -1, format: str | None = None) -> Atoms:
    """One structure from a file in any ASE-readable format: frame ``index`` (an int, or a string
    such as ``"-1"``). Errors are clear ``FileNotFoundError`` / ``ValueError`` naming the file and,
    for an index out of range, how many frames it has."""
    from ase import Atoms
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
    group.add_argument("--workers", type=POSITIVE_INT, default=None, metavar="N",
                       help=workers_help or "run tasks on a local Dask cluster of N worker processes "
                       "(default: in this process)")
    group.add_argument("--torch-threads", type=POSITIVE_INT, default=None, metavar="T",
                       help="torch threads per worker (default: cores // N for --workers; the worker's "
                       "OMP_NUM_THREADS, 1 under Dask's nanny, for --scheduler)")


def executor_from_args(args: argparse.Namespace) -> contextlib.AbstractContextManager[Any]:
    """:func:`~equiformer_calc.distributed.open_executor` for the parsed
    :func:`add_executor_arguments` options."""
    from ..distributed import open_executor

    if args.scheduler is not None and args.workers is not None:
        raise ValueError("give --scheduler or --workers, not both")
    return open_executor(scheduler=args.scheduler, workers=args.workers, torch_threads=args.torch_threads)
