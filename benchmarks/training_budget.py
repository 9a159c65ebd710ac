#!/usr/bin/env python
"""How much training the accuracy targets would take: final error against training length.

Each completed training run (a ``history.json`` written by ``equiformer-calc train``, one full
warm-up + cosine schedule) gives one point: its number of steps and the validation errors of its
best checkpoint. A power law ``error = a * steps**b`` through these points (least squares in
log-log) is extrapolated to the targets (force MAE 0.030 eV/A, energy MAE 3 meV/atom) and
converted to hours with the last run's seconds per step. With two runs the line goes through
both points exactly, so the extrapolation is an estimate of scale, not a prediction.

Writes a log-log PNG (validation curves of every run, the end points, the fitted lines, the
targets) and prints a JSON summary.

Example:
    python benchmarks/training_budget.py \\
        checkpoints/emt-small-train/previous/history.json checkpoints/emt-small-train/history.json \\
        --labels "2,600 steps" "9,000 steps" --png checkpoints/emt-small-train/training_budget.png
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger("bench.training_budget")
TARGETS = {"val_e_mae_atom": (0.003, 1000.0, "energy MAE (meV/atom)"), "val_f_mae": (0.030, 1.0, "force MAE (eV/A)")}


def best_row(history: list[dict]) -> dict:
    """The validation row the trainer kept as best (its model-selection loss, in target units)."""
    rows = [r for r in history if "val_f_mae" in r]
    return min(rows, key=lambda r: r["val_e_mae_atom"] / 0.003 + r["val_f_mae"] / 0.03)


def fit_power_law(steps: list[float], errors: list[float]) -> tuple[float, float]:
    """(a, b) of error = a * steps**b, least squares in log-log."""
    b, log_a = np.polyfit(np.log(steps), np.log(errors), 1)
    return float(math.exp(log_a)), float(b)


def budget(histories: list[list[dict]], labels: list[str]) -> dict:
    runs = []
    for label, history in zip(labels, histories):
        row = best_row(history)
        last = history[-1]
        runs.append({
            "label": label, "steps": last["step"], "best_step": row["step"],
            "seconds_per_step": last["wall_s"] / last["step"],
            **{key: row[key] for key in TARGETS},
        })
    steps = [r["steps"] for r in runs]
    out: dict = {"runs": runs, "fits": {}}
    for key, (target, _, _) in TARGETS.items():
        errors = [r[key] for r in runs]
        a, b = fit_power_law(steps, errors)
        fit = {"a": a, "exponent": b, "target": target}
        if b < 0:
            need = (target / a) ** (1.0 / b)
            fit["steps_to_target"] = need
            fit["hours_to_target_at_last_rate"] = need * runs[-1]["seconds_per_step"] / 3600
        out["fits"][key] = fit
    return out


def plot(histories: list[list[dict]], labels: list[str], summary: dict, path: Path) -> None:
    from equiformer_calc.io import new_figure, save_figure

    fig = new_figure((11, 4.2))
    axes = fig.subplots(1, 2)
    for ax, (key, (target, factor, name)) in zip(axes, TARGETS.items()):
        for label, history, run in zip(labels, histories, summary["runs"]):
            rows = [r for r in history if key in r]
            line, = ax.plot([r["step"] for r in rows], [r[key] * factor for r in rows], "-", alpha=0.6, label=f"{label} (validation)")
            ax.plot([run["steps"]], [run[key] * factor], "o", color=line.get_color())
        fit = summary["fits"][key]
        top = max(fit.get("steps_to_target", 0.0), 2 * max(r["steps"] for r in summary["runs"]))
        xs = np.geomspace(min(r["steps"] for r in summary["runs"]) / 2, top * 1.3, 50)
        ax.plot(xs, fit["a"] * xs ** fit["exponent"] * factor, "k:", label=f"end points: error ~ steps^{fit['exponent']:.2f}")
        ax.axhline(target * factor, color="r", lw=1, label="target")
        if "steps_to_target" in fit:
            ax.axvline(fit["steps_to_target"], color="r", ls="--", lw=0.8)
            ax.annotate(f"~{fit['steps_to_target']:,.0f} steps\n~{fit['hours_to_target_at_last_rate']:.0f} h on this machine",
                        (fit["steps_to_target"], target * factor), textcoords="offset points", xytext=(-120, 30), fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training steps (batch of 4 structures)")
        ax.set_ylabel(f"validation {name}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("emt-small: best validation error of each full schedule, extrapolated to the targets")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("histories", nargs="+", type=Path, help="history.json of each completed run, shortest first")
    parser.add_argument("--labels", nargs="+", help="one label per run (default: the file names)")
    parser.add_argument("--png", type=Path, help="write the log-log plot here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if len(args.histories) < 2:
        parser.error("need at least two completed runs")
    labels = args.labels or [str(p) for p in args.histories]
    if len(labels) != len(args.histories):
        parser.error("--labels needs one label per history")
    histories = [json.loads(p.read_text()) for p in args.histories]
    summary = budget(histories, labels)
    if args.png:
        plot(histories, labels, summary, args.png)
        log.info("wrote %s", args.png)
    sys.stdout.write(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
