"""Atomic file writes: a reader (or a run killed mid-write) sees the old file or the new one, never a
torn one. Every file the package writes for later reading (checkpoints, trainer state, histories,
JSON reports, plots) goes through :func:`atomic_path`."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "write_text_atomic"]


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; when the block ends without an exception it
    replaces ``path`` (one ``os.replace``), otherwise it is removed. ``suffix`` lets writers that
    infer the format from the name (matplotlib) see the right extension."""
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
