"""The numbers of the shipped checkpoint's model card, reproducibly.

``python benchmarks/card_metrics.py [CKPT] [--testset FILE] [--data FILE ...] [--relax DATADIR]``
prints JSON to stdout::

    {"checkpoint": ..., "checkpoint_sha256": ..., "testset_file": ..., "testset_sha256": ...,
     "testset": {"n_frames", "e_mae_atom", "e_mae", "f_mae", "f_rmse", "f_cos", "s_mae", ...},
     "data": {"test_id.extxyz": {...}, ...},            # with --data
     "relax_benchmark": {...summary...}}                 # with --relax

``testset`` are the metrics of ``CKPT`` (a path or shipped name; default: the package's default
checkpoint) on its committed held-out frames ``checkpoints/<name>.testset.extxyz`` (see
``benchmarks/make_testset.py``), evaluated as ``EquiformerCalculator()`` runs (float32, CPU):
energy MAE per atom (eV/atom) and per structure (eV), force MAE / RMSE over free atoms (eV/A),
force cosine similarity, stress MAE (eV/A^3, bulk frames). ``tests/test_shipped_checkpoint.py``
checks that these stay within 5 % of the ``"testset"`` numbers in every shipped
``checkpoints/<name>.card.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from equiformer_calc.runtime import set_threads

ROOT = Path(__file__).resolve().parent.parent


def default_testset(checkpoint: str | Path) -> Path:
    """The committed held-out frames of a shipped checkpoint: ``checkpoints/<name>.testset.extxyz``."""
    return ROOT / "checkpoints" / f"{Path(str(checkpoint)).name.removesuffix('.safetensors')}.testset.extxyz"
#: the metric keys reported under "testset" (lower is better except f_cos)
CARD_KEYS = ("n_frames", "e_mae_atom", "e_rmse_atom", "e_mae", "f_mae", "f_rmse", "f_cos", "s_mae", "s_rmse")

log = logging.getLogger("card_metrics")


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def card_metrics(
    checkpoint: str | Path,
    testset: str | Path | None = None,
    data: Sequence[str | Path] = (),
    relax: str | Path | None = None,
    relax_max_tasks: int | None = None,
    dtype: str = "float32",
) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on ``testset`` (and optionally full data files and the
    relaxation benchmark of a datagen folder) as a JSON-ready dict."""
    from equiformer_calc.checkpoint import load_checkpoint, resolve_checkpoint
    from equiformer_calc.io import jsonable
    from equiformer_calc.train.evaluate import evaluate

    path = resolve_checkpoint(checkpoint)
    testset = default_testset(path) if testset is None else testset
    model = load_checkpoint(path)
    result = evaluate(model, testset, batch_size=16, dtype=dtype, by=("config_type",))
    out: dict[str, Any] = {
        "checkpoint": str(path),
        "checkpoint_sha256": _sha256(path),
        "testset_file": str(testset),
        "testset_sha256": _sha256(Path(testset)),
        "dtype": dtype,
        "torch": torch.__version__,
        "testset": {k: result["overall"][k] for k in CARD_KEYS if k in result["overall"]},
        "testset_by_config_type": {
            v: {k: m[k] for k in CARD_KEYS if k in m} for v, m in result["groups"].get("config_type", {}).items()
        },
    }
    if data:
        out["data"] = {}
        names = [Path(item).name for item in data]
        for item in data:
            res = evaluate(model, item, batch_size=16, dtype=dtype, by=("config_type",), progress=True)
            # the file name, or folder/name where two files share a name (e.g. two datagen test_id files)
            key = Path(item).name if names.count(Path(item).name) == 1 else f"{Path(item).parent.name}/{Path(item).name}"
            if key in out["data"]:
                raise ValueError(f"two --data files would both be reported as {key!r}: {item}")
            out["data"][key] = {
                "overall": {k: res["overall"][k] for k in CARD_KEYS if k in res["overall"]},
                "by_config_type": {
                    v: {k: m[k] for k in CARD_KEYS if k in m} for v, m in res["groups"].get("config_type", {}).items()
                },
            }
    if relax is not None:
        from equiformer_calc import ModelSettings
        from equiformer_calc.workflows.adsorbml import relax_benchmark

        settings = ModelSettings(checkpoint=str(path), dtype=dtype)
        bench = relax_benchmark(settings, relax, max_tasks=relax_max_tasks, progress=True)
        out["relax_benchmark"] = bench["summary"]
    return jsonable(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from equiformer_calc.checkpoint import DEFAULT_CHECKPOINT

    parser.add_argument("checkpoint", nargs="?", default=DEFAULT_CHECKPOINT,
                        help=f"checkpoint file or shipped name (default: {DEFAULT_CHECKPOINT})")
    parser.add_argument("--testset", type=Path,
                        help="held-out frames (default: checkpoints/<name>.testset.extxyz of the checkpoint)")
    parser.add_argument("--data", nargs="*", default=[], help="further labelled files (e.g. test_id / test_ood)")
    parser.add_argument("--relax", type=Path, help="datagen folder for the relaxation benchmark")
    parser.add_argument("--relax-max-tasks", type=int)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    set_threads(args.threads)
    out = card_metrics(args.checkpoint, args.testset, args.data, args.relax, args.relax_max_tasks, args.dtype)
    sys.stdout.write(json.dumps(out, indent=1, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
