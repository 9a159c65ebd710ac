"""Writing files: atomically, and figures without touching matplotlib's global state.

Atomic: a reader (or a run killed mid-write) sees the old file or the new one, never a torn one.
Every file the package writes for later reading (checkpoints, trainer state, histories, JSON
reports, CSV tables, plots) goes through :func:`atomic_path`.

Figures: :func:`new_figure` makes a :class:`matplotlib.figure.Figure` on its own Agg canvas, so
library code never calls ``matplotlib.use`` or ``pyplot`` (a notebook user's backend and open
figures stay as they were); :func:`save_figure` writes it as PNG atomically.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

__all__ = [
    "atomic_path", "write_text_atomic", "jsonable", "write_json", "write_csv", "new_figure", "save_figure",
    "file_sha256",
]


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; when the block ends without an exception it
    replaces ``path`` (one ``os.replace``), otherwise it is removed. ``suffix`` lets writers that
    infer the format from the name (matplotlib, ASE) see the right extension."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def jsonable(obj: Any) -> Any:
    """NaN / inf -> None (strict JSON), numpy scalars -> Python numbers, tuples -> lists, recursively."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented strict JSON (NaN -> null, see :func:`jsonable`) atomically; creates
    the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(jsonable(obj), indent=1, allow_nan=False) + "\n")
    return path


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """A CSV table, written atomically (floats with full precision, ``repr``); creates the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow([repr(float(v)) if isinstance(v, (float, np.floating)) else v for v in row])
    return path


def new_figure(figsize: tuple[float, float]) -> Any:
    """A :class:`matplotlib.figure.Figure` drawn by its own Agg canvas (no pyplot, no global backend):
    make axes with ``fig.subplots(...)`` and write it with :func:`save_figure`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically; creates the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file's bytes, read in 1 MiB blocks (checkpoints, reference
    checkpoints and dataset files are identified by it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
