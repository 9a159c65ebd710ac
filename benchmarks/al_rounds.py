"""Per-round numbers of the active-learning distillation (issue 23), on the committed benchmark.

``python benchmarks/al_rounds.py CKPT --out checkpoints/pbe-distilled-al/roundN/eval.json``

For one checkpoint (a round's ``best.safetensors``, or the shipped ``pbe-distilled-small``), in one run:

* the model card's numbers (``benchmarks/card_metrics.py``): the committed test set
  ``checkpoints/pbe-distilled-small.testset.extxyz``, frame errors on the teacher data's ``test_id`` and
  ``test_ood`` splits, and the AdsorbML-style relaxation benchmark on the 48 committed relaxation
  references (relaxed adsorption-energy MAE, best site within 0.1 eV, anomalies): the very numbers the
  default's card states, so rounds and the shipped model compare one to one;
* the hole check (``benchmarks/hole_check.py``): the failing tasks with their measured reasons.

Needs the teacher (``pip install -e ".[teacher]"``) for the reference single points.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "checkpoints" / "pbe-distilled-small-data"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint path or shipped name")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-frames", action="store_true", help="only the relaxation benchmark and the hole check")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from equiformer_calc.checkpoint import resolve_checkpoint
    from equiformer_calc.io import write_json
    from equiformer_calc.runtime import set_threads
    from equiformer_calc.workflows.hole_check import hole_check

    set_threads(args.threads)
    path = resolve_checkpoint(args.checkpoint)
    card_metrics = _load("card_metrics")
    data = [] if args.skip_frames else [DATA / "test_id.extxyz.xz", DATA / "test_ood.extxyz.xz"]
    result = card_metrics.card_metrics(path, testset=ROOT / "checkpoints" / "pbe-distilled-small.testset.extxyz",
                                       data=data, relax=DATA)
    holes = hole_check(path, DATA)
    result["hole_check"] = {**holes["summary"], "failures": [
        {k: t.get(k) for k in ("task_id", "reasons", "max_displacement", "drop", "explanation")}
        for t in holes["tasks"] if t["fails"]]}
    write_json(result, args.out)
    rb = result["relax_benchmark"]
    print(f"{path}: adsorption-energy MAE {rb['adsorption_energy_mae']:.3f} eV, best site within 0.1 eV "
          f"{rb['best_site_within_0.1eV']:.3f}, holes {holes['summary']['n_failing']}/{holes['summary']['n_tasks']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
