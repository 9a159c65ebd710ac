"""Writing files: atomically, and figures without touching matplotlib's global state.

Atomic: a reader (or a run killed mid-write) sees the old file or the new one, never a torn one.
Every file the package writes for later reading (checkpoints, trainer state, histories, JSON
reports, CSV tables, plots) goes through :func:`atomic_path`.

Progress: :func:`progress` is the package's one tqdm entry point: a live bar on a terminal, and
one plain line per interval when stderr goes to a file or a pipe (no carriage-return spam in logs).

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
import re
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

__all__ = [
    "atomic_path", "current_umask", "OutputIsInputError", "same_file", "file_kind", "file_sha256", "progress",
    "PROGRESS_INTERVAL_ENV", "write_text_atomic", "jsonable", "write_json", "write_csv", "new_figure", "save_figure",
]


class OutputIsInputError(ValueError):
    """An output path is one of the command's input files: writing it would destroy the input."""


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether paths ``a`` and ``b`` name the same file: equal after resolving ``..`` and symlinks,
    or (both existing) the same inode, as hard links are."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


#: leading bytes -> (kind, what to tell a user who gave it as a checkpoint)
_MAGIC: tuple[tuple[bytes, str, str], ...] = (
    (b"\x1f\x8b", "gzip", "a gzip-compressed file (decompress it first: gunzip)"),
    (b"BZh", "bzip2", "a bzip2-compressed file (decompress it first: bunzip2)"),
    (b"\xfd7zXZ\x00", "xz", "an xz-compressed file (decompress it first: unxz)"),
    (b"(\xb5/\xfd", "zstd", "a zstd-compressed file (decompress it first: unzstd)"),
    (b"PK\x03\x04", "zip", "a zip archive (the torch.save format)"),
    (b"\x89HDF\r\n\x1a\n", "hdf5", "an HDF5 file"),
    (b"\x89PNG", "png", "a PNG image"),
)


def file_kind(path: str | os.PathLike) -> tuple[str, str]:
    """What a file looks like from its first bytes: ``(kind, description)`` with kind one of
    ``empty``, ``gzip``, ``bzip2``, ``xz``, ``zstd``, ``zip``, ``hdf5``, ``png``, ``safetensors``,
    ``pickle``, ``text`` or ``binary`` (unknown). For messages such as "x.pt is not a checkpoint:
    it looks like a gzip-compressed file"."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "empty", "an empty file"
    for magic, kind, text in _MAGIC:
        if head.startswith(magic):
            return kind, text
    if len(head) > 9 and head[8:9] == b"{":
        size = int.from_bytes(head[:8], "little")
        if 2 <= size <= os.path.getsize(path) - 8:
            return "safetensors", "a safetensors file"
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:
        return "pickle", "a pickle (the legacy torch.save format)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
        if len(head) == 4096:  # a multi-byte character cut at the end of the block
            try:
                text = head[:-3].decode("utf-8", errors="strict")
            except UnicodeDecodeError:
                text = ""
    if text and sum(c.isprintable() or c in "\n\r\t" for c in text) >= 0.95 * len(text):
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        return "text", f"a text file (first line: {first[:60]!r})"
    return "binary", "binary data of no checkpoint format (not a torch.save zip, pickle or safetensors file)"


def current_umask() -> int:
    """The process's file-mode creation mask, read without changing it (``/proc/self/status`` on
    Linux; elsewhere set-and-restore, which is not thread-safe but brief)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; when the block ends without an exception it
    replaces ``path`` (one ``os.replace``), otherwise it is removed. ``suffix`` lets writers that
    infer the format from the name (matplotlib, ASE) see the right extension. The file gets the
    mode a plain ``open(path, "w")`` would give it: 0666 less the umask, or the mode of the file
    it replaces."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file 0600 (and some writers, safetensors among them, replace it by
        # their own 0600 file); a file made by open() gets 0666 less the umask, and one rewritten
        # in place keeps its mode: the result is readable as the user's other files are
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            mode = 0o666 & ~current_umask()
        os.chmod(tmp, mode)
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


#: environment variable: seconds between progress lines when stderr is not a terminal (default
#: 30), or ``off`` for none
PROGRESS_INTERVAL_ENV = "EQUIFORMER_CALC_PROGRESS_INTERVAL"
_DEFAULT_PROGRESS_INTERVAL = 30.0


class _LineStream:
    """A file for tqdm that turns its in-place updates (``\\r`` + status) into whole lines: each
    distinct status once, ending in a newline; blank clears are dropped."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._last = ""

    def write(self, text: str) -> None:
        for part in re.split(r"[\r\n]", text):
            part = part.strip()
            if part and part != self._last:
                self.stream.write(part + "\n")
                self._last = part

    def flush(self) -> None:
        getattr(self.stream, "flush", lambda: None)()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def progress(iterable: Any = None, **kwargs: Any) -> Any:
    """A tqdm progress bar (same arguments as ``tqdm.auto.tqdm``) for long work.

    On a terminal or in a notebook it is tqdm's live bar. When the stream (stderr by default) is a
    file or a pipe it prints one plain line per interval: the :data:`PROGRESS_INTERVAL_ENV` seconds
    if set (``off``: nothing), else the caller's ``mininterval`` if at least 1 s, else 30 s; log
    files hold readable lines instead of carriage returns."""
    from tqdm.auto import tqdm

    stream = kwargs.get("file") or sys.stderr
    if "notebook" in getattr(tqdm, "__module__", "") or _is_terminal(stream):
        return tqdm(iterable, **kwargs)
    setting = os.environ.get(PROGRESS_INTERVAL_ENV, "").strip().lower()
    if setting in ("off", "none", "0"):
        kwargs["disable"] = True
        interval = _DEFAULT_PROGRESS_INTERVAL
    else:
        try:
            interval = float(setting) if setting else _DEFAULT_PROGRESS_INTERVAL
        except ValueError:
            raise ValueError(f"{PROGRESS_INTERVAL_ENV} must be a number of seconds or 'off', got {setting!r}") from None
        if not setting and float(kwargs.get("mininterval") or 0.0) >= 1.0:
            interval = float(kwargs["mininterval"])  # the caller chose a log interval
    kwargs.update(file=_LineStream(stream), mininterval=interval, maxinterval=max(interval, 10.0),
                  dynamic_ncols=False, ncols=kwargs.get("ncols") or 100, ascii=True)
    return tqdm(iterable, **kwargs)


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file's bytes, read in 1 MiB blocks (checkpoints, reference
    checkpoints and dataset files are identified by it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
