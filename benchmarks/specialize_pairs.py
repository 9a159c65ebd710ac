"""``specialize`` on three (metal, adsorbate) pairs against a reference (issue 28's target: relaxed
adsorption-energy MAE <= 0.10 eV on held-out sites of those pairs within 2 CPU-hours).

``python benchmarks/specialize_pairs.py --out runs/specialize-pt3 --json benchmarks/specialize_pairs.json``

Runs (or resumes: every finished phase of the campaign folder is skipped) ::

    equiformer-calc specialize pbe-distilled-small --reference sevennet --metals Pt --facets fcc111 \\
        --adsorbates O CO H --heldout-sites 2 --rounds R ...

in a child process, adds the child's CPU time to the CPU time recorded by earlier runs into the same
folder (``cpu_seconds.json``), and writes one JSON with the held-out MAE before the first round and after
each round, per held-out site, with the reference calls and CPU time spent. Needs the teacher extra
(``pip install -e ".[teacher]"``) for ``--reference sevennet``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent


def _command(args: argparse.Namespace) -> list[str]:
    return [
        sys.executable, "-m", "equiformer_calc.cli", "specialize", args.checkpoint, "--reference", args.reference,
        "--metals", *args.metals, "--facets", args.facet, "--adsorbates", *args.adsorbates,
        "--heldout-sites", str(args.heldout_sites), "--out", str(args.out), "--rounds", str(args.rounds),
        "--explore-systems", "60", "--md-systems", "10", "--teacher-calls", "250", "--teacher-relax-systems", "10",
        "--train-steps", "800", "--threads", "1", "--seed", str(args.seed), "--no-progress",
    ]


def summarise(folder: Path, cpu_seconds: float | None) -> dict[str, Any]:
    """The campaign's held-out numbers, round by round (``campaign.json`` of a specialize folder)."""
    campaign = json.loads((folder / "campaign.json").read_text())

    def rows(evaluation: dict[str, Any]) -> dict[str, Any]:
        return {
            "mae_eV": evaluation["adsorption_energy_mae"], "n_scored": evaluation["n_scored"],
            "n_student_anomalous": evaluation["n_student_anomalous"],
            "signed_error_eV": {s["group"]: s["e_ads"] - s["e_ads_ref"] for s in evaluation["systems"]
                                if not s["failed"]},
        }

    rounds = {}
    calls = 0
    for number, record in sorted(campaign["rounds"].items(), key=lambda kv: int(kv[0])):
        phases = record["phases"]
        calls += int(phases.get("label", {}).get("teacher_calls", 0))
        if "evaluate" in phases:
            rounds[number] = {**rows(phases["evaluate"]), "reference_calls_so_far": calls}
    return {
        "folder": str(folder), "config": campaign["config"], "heldout_groups": campaign["pool"]["heldout"],
        "before": rows(campaign["heldout_start"]), "rounds": rounds, "cpu_seconds": cpu_seconds,
        "target": {"mae_eV": 0.10, "cpu_hours": 2.0},
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="campaign folder (resumable)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "specialize_pairs.json")
    ap.add_argument("--checkpoint", default="pbe-distilled-small")
    ap.add_argument("--reference", default="sevennet")
    ap.add_argument("--metals", nargs="+", default=["Pt"])
    ap.add_argument("--facet", default="fcc111")
    ap.add_argument("--adsorbates", nargs="+", default=["O", "CO", "H"])
    ap.add_argument("--heldout-sites", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--summary-only", action="store_true", help="only summarise the folder (no run)")
    args = ap.parse_args(argv)

    ledger = args.out / "cpu_seconds.json"
    spent = json.loads(ledger.read_text())["cpu_seconds"] if ledger.is_file() else 0.0
    if not args.summary_only:
        subprocess.run(_command(args), check=True, cwd=ROOT)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        spent += usage.ru_utime + usage.ru_stime
        ledger.write_text(json.dumps({"cpu_seconds": spent}))
    result = summarise(args.out, spent if ledger.is_file() else None)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"held-out MAE before {result['before']['mae_eV']:.3f} eV; after each round: "
          + ", ".join(f"{k}: {v['mae_eV']:.3f}" for k, v in result["rounds"].items())
          + (f"; CPU {spent / 3600:.2f} h" if ledger.is_file() else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
