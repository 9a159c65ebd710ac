"""``equiformer-calc datagen``: generate a labelled dataset (the run is
:func:`equiformer_calc.data.generate.generate_dataset`)."""

from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path

from ._common import NONNEGATIVE_INT, POSITIVE_INT, error_line

__all__ = ["HELP", "add_arguments", "run"]

log = logging.getLogger(__name__)


HELP = "generate a labelled dataset of adsorbates on metal surfaces, bulk and gas molecules (extxyz)"

#: data.plan.SIZES' names, here so that --help stays light (tests/cli/test_help.py checks they are equal)
SIZE_NAMES = ("bulk", "large", "medium", "small", "teacher")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``equiformer-calc datagen``."""
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--seed", type=NONNEGATIVE_INT, default=0, help="global random seed (default: 0)")
    parser.add_argument(
        "--size",
        choices=SIZE_NAMES,
        default="small",
        help="preset: small (~300 frames, <1 min), medium (~30k frames), large (~3x medium), "
        "teacher (~15k frames, 9 metals + gas molecules, sized for an expensive labeller), "
        "bulk (strained/rattled bulk cells only, with stress)",
    )
    parser.add_argument(
        "--labeller",
        default="emt",
        help="what labels the data and drives its relaxations/MD: emt (default), sevennet[:MODEL] (needs the "
        "[teacher] extra), or module:factory for any importable function returning an ASE calculator",
    )
    parser.add_argument("--compress", action="store_true", help="write the split files as .extxyz.xz")
    parser.add_argument("--workers", type=POSITIVE_INT, default=1,
                        help="worker processes: a local Dask cluster when the [distributed] extra is installed, "
                        "else a process pool (the output does not depend on it)")
    parser.add_argument("--scheduler", metavar="ADDRESS", default=None,
                        help="label on the Dask cluster of this scheduler (tcp://HOST:8786); shards are written here")
    parser.add_argument("--overwrite", action="store_true", help="replace a complete dataset with other settings")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``equiformer-calc datagen``. It reads no files (the dataset is generated), so
    the only output check is that ``--out`` is a folder (an existing file is refused)."""
    from ..data.generate import LabellingFailed, generate_dataset
    from ..distributed import open_executor

    if args.out.exists() and not args.out.is_dir():
        raise NotADirectoryError(f"--out {args.out} is a file, not a folder: give a folder for the dataset")
    dask = args.scheduler is not None
    if not dask and args.workers > 1:
        try:
            import distributed  # noqa: F401

            dask = True
        except ImportError:
            log.info("dask.distributed is not installed: %d worker processes in a local pool", args.workers)
    try:
        with (
            open_executor(scheduler=args.scheduler) if args.scheduler
            else open_executor(workers=args.workers) if dask
            else contextlib.nullcontext(None)
        ) as executor:
            generate_dataset(
                args.out,
                seed=args.seed,
                size=args.size,
                workers=args.workers,
                progress=not args.no_progress,
                overwrite=args.overwrite,
                labeller=args.labeller,
                compress=args.compress,
                executor=executor,
            )
    except FileExistsError as exc:  # a dataset of other settings is there: a wrong input
        raise ValueError(f"{exc} (--overwrite replaces it)".replace("; pass overwrite=True", "")) from None
    except LabellingFailed as exc:  # the finished tasks are kept: rerunning resumes
        error_line("datagen", f"{exc}")
        return 1
    return 0
