"""Use your own checkpoint (train-free): build a model, save it, load it by path or by name.

    python examples/own_checkpoint.py [--preset small] [--out-dir own_checkpoint]

A checkpoint is one ``.safetensors`` file with the architecture and your metadata in its header.
Here the weights are random (the numbers mean nothing physically) -- replace the model with one
you trained (``equiformer-calc train``) or fine-tuned. The file then works everywhere a shipped
checkpoint does: ``EquiformerCalculator(checkpoint=path)``, every workflow's ``checkpoint=`` and
every CLI's ``--checkpoint PATH``; put it in a folder listed in ``$EQUIFORMER_CALC_CHECKPOINTS`` to
load it by its short name.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch
from ase.build import add_adsorbate, fcc111

from equiformer_calc import Equiformer, EquiformerCalculator, relax, save_checkpoint
from equiformer_calc.checkpoint import available_checkpoints, read_metadata

log = logging.getLogger("own_checkpoint")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", help="architecture preset (small, tiny, md17-l2, ...)")
    parser.add_argument("--steps", type=int, default=20, help="relaxation steps of the demo")
    parser.add_argument("--out-dir", default="own_checkpoint")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out_dir)

    torch.manual_seed(0)
    model = Equiformer.from_preset(args.preset, elements=["H", "C", "O", "Cu"], cutoff=5.0)
    path = save_checkpoint(model, out / "my-model.safetensors", {"description": "random weights, demo only"})
    log.info("saved %s (%d parameters, %.0f kB)", path, model.num_parameters(), path.stat().st_size / 1e3)
    log.info("metadata: %s", {k: v for k, v in read_metadata(path).items() if k in ("description", "num_parameters")})

    calc = EquiformerCalculator(checkpoint=str(path))  # by path
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "O", 1.8, "fcc")
    slab.calc = calc
    log.info("energy by path: %.6f eV", slab.get_potential_energy())

    os.environ["EQUIFORMER_CALC_CHECKPOINTS"] = str(out)  # by name
    assert "my-model" in available_checkpoints()
    same = EquiformerCalculator(checkpoint="my-model")
    log.info("energy by name: %.6f eV (same model)", same.predict([slab])[0]["energy"])

    result = relax(slab, calculator=str(path), steps=args.steps, fix_bottom=1)
    log.info("relax with it: %d steps, %.4f -> %.4f eV", result.nsteps, result.initial_energy, result.final_energy)
    log.info("CLI: equiformer-calc relax slab.extxyz --checkpoint %s", path)


if __name__ == "__main__":
    main()
