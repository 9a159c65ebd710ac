"""Builders shared by the tests: tiny random-weight models (weights perturbed so no output is
trivially zero) and small structures of each kind (molecule, slab with adsorbate, bulk)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc111, molecule

from equiformer_calc.model import Equiformer

# tiny models are dominated by per-op overhead: one thread avoids oversubscribing 2 cores
torch.set_num_threads(1)

ELEMENTS = ["H", "C", "N", "O", "Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au"]


def perturb(model: Equiformer, seed: int = 0, scale: float = 0.1) -> Equiformer:
    """Add noise to every parameter (biases and norm weights included) and set non-trivial
    energy references, so no term of the output is zero by construction."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
        model.atomic_energies.copy_(torch.linspace(-5.0, -1.0, len(model.elements), dtype=torch.float64))
        model.scale.fill_(1.3)
        model.shift.fill_(-0.2)
    return model


def make_model(seed: int = 0, **overrides) -> Equiformer:
    torch.manual_seed(seed)
    return perturb(Equiformer.from_preset("tiny", elements=ELEMENTS, **overrides), seed=seed)


def slab_with_adsorbate() -> Atoms:
    atoms = fcc111("Cu", (2, 2, 3), vacuum=6.0)
    add_adsorbate(atoms, "O", 1.7, "fcc")
    atoms.rattle(0.05, seed=3)
    return atoms


def bulk_cell() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.62, cubic=True) * (1, 1, 2)
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.03, 0.0], [0.0, 1.0, -0.02], [0.01, 0.0, 1.0]]), scale_atoms=True)
    atoms.rattle(0.08, seed=4)
    return atoms


def molecule_system() -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=5)
    return atoms


SYSTEMS = {"molecule": molecule_system, "slab": slab_with_adsorbate, "bulk": bulk_cell}


#: a datagen size spec small enough for tests (a few seconds of EMT)
TINY_DATASET = {
    "adsorbate_systems": 6,
    "slab_systems": 2,
    "bulk_systems": 2,
    "relax_tasks": 2,
    "max_relax_steps": 30,
    "adsorbate_frames": {"relax": 3, "rattle": 2, "md": 1, "md_stride": 3},
    "slab_frames": {"relax": 2, "rattle": 2, "md": 1, "md_stride": 3},
    "bulk_frames": {"relax": 2, "rattle": 2, "md": 1, "md_stride": 3},
    "val_fraction": 0.2,
}


def counting_emt():
    """``module:factory`` labeller for tests (``tests.helpers:counting_emt``): EMT that appends one line
    per call to ``$EQC_TEST_CALL_LOG`` and SIGKILLs its own process at call ``$EQC_TEST_KILL_AT`` (if
    set), to test that labelling survives ``kill -9`` without labelling anything twice."""
    import os
    import signal

    from ase.calculators.emt import EMT

    class _Counting(EMT):
        def calculate(self, atoms=None, properties=("energy",), system_changes=None):
            log = os.environ.get("EQC_TEST_CALL_LOG")
            if log:
                with open(log, "a") as fh:
                    fh.write("call\n")
                kill_at = int(os.environ.get("EQC_TEST_KILL_AT", "0"))
                if kill_at and sum(1 for _ in open(log)) >= kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
            super().calculate(atoms, properties, system_changes)

    return _Counting()


def tiny_train_config(data: Any, out: Any, **overrides: Any) -> Any:
    """A few-second training run (``TrainConfig``) of the tiny preset on the tiny dataset."""
    from equiformer_calc.train.trainer import TrainConfig

    settings: dict[str, Any] = dict(
        train=str(data / "train.extxyz"), val=str(data / "val.extxyz"), out=str(out), preset="tiny", batch_size=2,
        max_steps=4, val_every=2, warmup_steps=1, threads=1, max_val=4, seed=0,
    )
    settings.update(overrides)
    return TrainConfig(**settings)
