"""Bulk properties of fcc metals: a model against a reference calculator (its teacher, or EMT).

``python benchmarks/bulk_properties.py --model CKPT[,CKPT...] --reference LABELLER [--metals Cu,Pt] [--out FILE.json]``

For each metal: lattice constant and bulk modulus (EOS), C11/C12/C44 (stress-strain), phonon frequencies at
X and L (phonopy, 4x4x4 supercell; needs the [phonons] extra), for the model (an Equiformer checkpoint name or path) and
the reference (``emt``, ``sevennet`` or ``module:factory``, see ``equiformer_calc.data.labellers``), with
the relative deviations. Several models (comma-separated) share one computation of the reference.
Prints a Markdown table per model; ``--out`` writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

KEYS = ("a0", "B_GPa", "C11", "C12", "C44")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="emt-small", help="checkpoint name(s) or path(s), comma-separated (default emt-small)")
    parser.add_argument("--reference", default="emt", help="labeller of the reference (default emt)")
    parser.add_argument("--metals", default="Cu,Ag,Au,Ni,Pd,Pt,Al", help="comma-separated fcc metals")
    parser.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="JSON output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    torch.set_num_threads(args.threads)
    from equiformer_calc.calculators.local import EquiformerCalculator
    from equiformer_calc.data.labellers import JournaledCalculator, LabelStats, resolve_labeller
    from equiformer_calc.workflows.bulk_properties import fcc_properties, relative_deviation

    models = {name: EquiformerCalculator(checkpoint=name, dtype=args.dtype) for name in args.model.split(",")}
    reference = JournaledCalculator(resolve_labeller(args.reference), LabelStats())
    rows: dict[str, dict] = {name: {} for name in models}
    for metal in args.metals.split(","):
        ref = fcc_properties(reference, metal)
        for name, model in models.items():
            mod = fcc_properties(model, metal, a_guess=ref["a0"])
            rows[name][metal] = {"model": mod, "reference": ref, "deviation": relative_deviation(mod, ref, KEYS)}
            logging.info("%s %s: %s", name, metal, {k: round(v, 3) for k, v in rows[name][metal]["deviation"].items()})

    dev_keys = [*KEYS, "nu_max_X", "nu_max_L"]
    for name, table in rows.items():
        print(f"\n{name} against {args.reference} (model / reference, deviation):\n")
        print(f"| metal | {' | '.join(dev_keys)} |")
        print("|---|" + "---:|" * len(dev_keys))
        for metal, row in table.items():
            cells = [f"{row['model'][k]:.3g} / {row['reference'][k]:.3g} ({100 * row['deviation'][k]:+.0f} %)"
                     if k in row["model"] else f"{100 * row['deviation'][k]:+.0f} %" for k in dev_keys]
            print(f"| {metal} | {' | '.join(cells)} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        out = {"reference": args.reference, "models": {name: {"metals": table} for name, table in rows.items()}}
        if len(models) == 1:  # the single-model layout of earlier runs
            out = {"model": args.model, "reference": args.reference, "metals": next(iter(rows.values()))}
        args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
