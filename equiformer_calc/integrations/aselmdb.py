"""fairchem's ``.aselmdb`` files (OC20 / OMat24 / OMol-style ASE rows in LMDB), read with ``lmdb``
(``pip install 'equiformer-calc[lmdb]'``): :func:`read_rows` yields ASE ``AtomsRow`` objects;
``equiformer_calc.data.readers.read_frames`` turns them into labelled frames. Rows are
zlib-compressed JSON decoded with ASE's JSON decoder; nothing is ever unpickled.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = ["ASELMDB_SUFFIXES", "read_rows"]

#: file suffixes read as fairchem ASE-LMDB files
ASELMDB_SUFFIXES = (".aselmdb", ".lmdb")
#: per-structure row fields of an ASE db row that are arrays
_ROW_ARRAYS = ("numbers", "positions", "cell", "pbc", "momenta", "initial_magmoms", "initial_charges", "tags", "masses")
_CALC_RESULTS = ("energy", "free_energy", "forces", "stress", "magmom", "magmoms", "charges", "dipole", "energies")


def _lmdb_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in ASELMDB_SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"{path}: folder has no {' / '.join(ASELMDB_SUFFIXES)} files")
        return files
    return [path]


def _decode(raw: bytes, where: str) -> Any:
    from ase.io.jsonio import decode

    try:
        text = zlib.decompress(raw).decode("utf-8")
    except zlib.error:
        text = raw.decode("utf-8", errors="strict") if raw[:1] in (b"{", b"[") or raw[:1].isdigit() else None
        if text is None:
            raise ValueError(
                f"{where}: not a zlib-compressed JSON ASE row (pickled LMDB datasets of the old OC20 "
                "format are not read: unpickling can run arbitrary code)"
            ) from None
    return decode(text)


def read_rows(path: str | os.PathLike) -> Iterator[Any]:
    """``ase.db.row.AtomsRow`` objects of a fairchem ``.aselmdb`` file (or every such file of a
    folder, sorted by name), in id order. Rows are zlib-compressed JSON written with ASE's JSON encoder (``ase-db-backends``,
    which fairchem uses) or with orjson; they are decoded with ``ase.io.jsonio.decode``, never
    unpickled."""
    try:
        import lmdb
    except ImportError as exc:
        raise ImportError("reading .aselmdb files needs lmdb: pip install 'equiformer-calc[lmdb]'") from exc
    from ase.db.row import AtomsRow

    for file in _lmdb_files(Path(path)):
        env = lmdb.open(str(file), subdir=False, readonly=True, lock=False, readahead=False, meminit=False)
        try:
            with env.begin(write=False) as txn:
                raw = txn.get(b"nextid")
                if raw is None:
                    first = next(iter(txn.cursor()), (b"", b""))[1]
                    kind = " (it looks pickled: the old OC20 LMDB format, not read because unpickling can run arbitrary code)" if first[:1] == b"\x80" else ""
                    raise ValueError(f"{file}: no 'nextid' entry, so not a fairchem ASE-LMDB file{kind}")
                nextid = int(_decode(raw, f"{file}: nextid"))
                raw = txn.get(b"deleted_ids")
                deleted = set(_decode(raw, f"{file}: deleted_ids")) if raw is not None else set()
                for idx in range(1, nextid):
                    if idx in deleted:
                        continue
                    raw = txn.get(str(idx).encode("ascii"))
                    if raw is None:
                        continue
                    dct = _decode(raw, f"{file}: row {idx}")
                    if not isinstance(dct, dict) or "numbers" not in dct:
                        raise ValueError(f"{file}: row {idx} is not an ASE atoms row")
                    for key in _ROW_ARRAYS + _CALC_RESULTS:
                        if key in dct and isinstance(dct[key], list):
                            dct[key] = np.asarray(dct[key])
                    dct["id"] = idx
                    yield AtomsRow(dct)
        finally:
            env.close()
