"""The hole check of a checkpoint on the committed relaxation references (issue 23).

``python benchmarks/hole_check.py [CKPT] [--data DIR] [--out FILE.json] [--update-card]``

Student relaxations started at the teacher's minima of the 48 committed relaxation references
(``checkpoints/pbe-distilled-small-data``); a task fails when a free atom moves more than 0.5 A or the
student ends more than 0.5 eV below the teacher's verdict on the same path (the definition is
:data:`equiformer_calc.workflows.hole_check.DEFINITION`). Prints the summary and the failing tasks;
``--out`` writes everything as JSON; ``--update-card`` writes the failing tasks, each with its measured
explanation, into ``checkpoints/<name>.card.json`` under ``"hole_check"`` (with the checkpoint's sha256),
which ``tests/workflows/test_hole_check.py`` holds the checkpoint to. Needs the teacher
(``pip install -e ".[teacher]"``; the ``test`` extra includes it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT / "checkpoints" / "pbe-distilled-small-data"


def card_section(result: dict, checkpoint_path: Path) -> dict:
    """The card's ``hole_check`` section from one run."""
    s = result["summary"]
    return {
        "definition": s["definition"],
        "data": str(Path(s["data_dir"]).resolve().relative_to(ROOT)) if Path(s["data_dir"]).resolve().is_relative_to(ROOT)
        else s["data_dir"],
        "teacher": s["teacher"],
        "checkpoint_sha256": hashlib.sha256(checkpoint_path.read_bytes()).hexdigest(),
        "command": "python benchmarks/hole_check.py " + checkpoint_path.stem + " --update-card",
        "n_tasks": s["n_tasks"],
        "n_failing": s["n_failing"],
        "failures": [
            {"task_id": t["task_id"], "reasons": t["reasons"], "max_displacement_A": t.get("max_displacement"),
             "drop_eV": t.get("drop"), "explanation": t["explanation"]}
            for t in result["tasks"] if t["fails"]
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", default="pbe-distilled-small", help="checkpoint (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="datagen folder with relaxation references")
    parser.add_argument("--out", type=Path, help="write the full result as JSON here")
    parser.add_argument("--update-card", action="store_true", help="write the failing tasks into the checkpoint's card JSON")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from equiformer_calc.checkpoint import resolve_checkpoint
    from equiformer_calc.io import write_json
    from equiformer_calc.runtime import set_threads
    from equiformer_calc.workflows.hole_check import hole_check

    set_threads(args.threads)
    path = resolve_checkpoint(args.checkpoint)
    result = hole_check(path, args.data, progress=True)
    s = result["summary"]
    print(f"{path.name}: {s['n_failing']} of {s['n_tasks']} tasks fail ({s['n_moved']} moved > {s['max_move_A']} A, "
          f"{s['n_below_teacher']} below the teacher by > {s['max_drop_eV']} eV); median displacement "
          f"{s['median_displacement_A']:.3f} A; {s['wall_s']:.0f} s")
    for t in result["tasks"]:
        if t["fails"]:
            print(f"  {t['task_id']}: {', '.join(t['reasons'])}: {t['explanation']}")
    if args.out:
        write_json(result, args.out)
    if args.update_card:
        card_path = path.with_suffix(".card.json")
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        card["hole_check"] = card_section(result, path)
        write_json(card, card_path)
        print(f"updated {card_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
