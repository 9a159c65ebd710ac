"""Build the small held-out test set shipped next to the checkpoint.

``python benchmarks/make_testset.py`` samples 60 frames deterministically from
``data/emt-medium/test_id.extxyz`` (made by ``equiformer-calc datagen --out data/emt-medium
--seed 0 --size medium``) into ``checkpoints/emt-small.testset.extxyz``: stratified by
``config_type`` (36 adsorbate, 12 slab, 12 bulk frames, so stress is covered) and, within each,
spread evenly over ``frame_kind`` (relax / rattle / md). Frames keep their EMT energy, raw forces,
stress (bulk), ``fixed`` / ``tags`` arrays, FixAtoms constraint and ``info``; ``source_index``
records each frame's position in the source file and the file's SHA-256 is logged.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT / "data" / "emt-medium" / "test_id.extxyz"
DEFAULT_OUT = ROOT / "checkpoints" / "emt-small.testset.extxyz"
#: frames per config_type
DEFAULT_QUOTA = {"adsorbate": 36, "slab": 12, "bulk": 12}

log = logging.getLogger("make_testset")


def _spread(groups: dict[str, list[int]], n: int, rng: np.random.Generator) -> list[int]:
    """``n`` indices drawn without replacement, as evenly as possible over ``groups`` (sorted
    keys; a group smaller than its share gives its remainder to the others)."""
    keys = sorted(groups)
    quota = {k: 0 for k in keys}
    left = n
    while left > 0:
        open_keys = [k for k in keys if quota[k] < len(groups[k])]
        if not open_keys:
            break
        for k in open_keys:
            if left == 0:
                break
            quota[k] += 1
            left -= 1
    chosen: list[int] = []
    for k in keys:
        chosen += [int(i) for i in rng.choice(groups[k], size=quota[k], replace=False)]
    return chosen


def make_testset(
    source: str | os.PathLike = DEFAULT_SOURCE,
    out: str | os.PathLike = DEFAULT_OUT,
    quota: dict[str, int] | None = None,
    seed: int = 0,
) -> list[int]:
    """Write the sampled frames (in source order) to ``out`` atomically; returns their indices."""
    from ase.io import read, write

    from equiformer_calc.data.readers import open_seekable
    from equiformer_calc.io import atomic_path

    quota = dict(DEFAULT_QUOTA if quota is None else quota)
    frames = read(open_seekable(Path(source)), ":", format="extxyz")
    strata: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for k, atoms in enumerate(frames):
        strata[str(atoms.info.get("config_type"))][str(atoms.info.get("frame_kind"))].append(k)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for config_type in sorted(quota):
        if config_type not in strata:
            raise ValueError(f"{source} has no {config_type!r} frames")
        chosen += _spread(strata[config_type], quota[config_type], rng)
    chosen.sort()
    picked = []
    for k in chosen:
        atoms = frames[k]
        atoms.info["source_index"] = int(k)
        picked.append(atoms)
    out = Path(out)
    with atomic_path(out) as tmp:
        write(str(tmp), picked, format="extxyz")
    digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    log.info("wrote %d frames (%d bytes) to %s from %s (sha256 %s)", len(picked), out.stat().st_size, out, source,
             digest)
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    make_testset(args.source, args.out, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
