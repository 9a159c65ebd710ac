"""Fine-tuning a trained checkpoint (``train --init-from``; ``equiformer_calc.train.finetune``).

* data holding an element the checkpoint lacks is refused with the element named;
* growing the model by new elements keeps every prediction on the old elements exactly (float64);
* the energy-reference refit recovers per-element offsets between two calculators' energy zeros;
* ``train`` with ``init_from`` starts from the checkpoint's weights (not a fresh model) and learns.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from equiformer_calc.calculators.local import EquiformerCalculator
from equiformer_calc.checkpoint import load_checkpoint, save_checkpoint
from equiformer_calc.cli import main as cli_main
from equiformer_calc.train.data import samples_from_atoms
from equiformer_calc.train.finetune import FineTuneError, init_from_checkpoint, refit_energy_references

from ..helpers import make_model


def _frames(n: int, metal: str = "Cu", seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        # compositions vary independently (slab thickness, one or two adsorbates) so that per-element
        # energy references are identifiable
        layers = 3 if k % 3 else 2
        atoms = fcc111(metal, (2, 2, layers), vacuum=5.0, a={"Cu": 3.59, "Pt": 3.92, "Ni": 3.49}[metal])
        add_adsorbate(atoms, "O" if k % 2 else "H", 1.6 + 0.2 * rng.random(), "fcc")
        if k % 4 == 0:
            add_adsorbate(atoms, "H", 1.5, "hcp")
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
        frames.append(atoms)
    return frames


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model over H, O, Cu, Pt only, saved as a checkpoint."""
    torch.manual_seed(0)
    model = make_model(2)
    from equiformer_calc.model import Equiformer

    small = Equiformer.from_preset("tiny", elements=["H", "O", "Cu", "Pt"])
    small.load_state_dict({k: v for k, v in model.state_dict().items() if k in small.state_dict()
                           and v.shape == small.state_dict()[k].shape}, strict=False)
    path = tmp_path_factory.mktemp("ft") / "base.safetensors"
    save_checkpoint(small, path, {"name": "base"})
    return path


def test_unknown_element_is_refused(ckpt: Path) -> None:
    with pytest.raises(FineTuneError, match=r"element\(s\) \['Ni'\] that checkpoint .* lacks"):
        init_from_checkpoint(str(ckpt), ["H", "O", "Ni"])


def test_growing_keeps_old_predictions_exactly(ckpt: Path) -> None:
    base = load_checkpoint(ckpt)
    grown = init_from_checkpoint(str(ckpt), ["H", "O", "Ni", "Cu"], new_elements=True)
    assert grown.elements == ["H", "O", "Cu", "Pt", "Ni"]
    atoms = _frames(1)[0]
    a, b = atoms.copy(), atoms.copy()
    a.calc = EquiformerCalculator(model=base, dtype="float64")
    b.calc = EquiformerCalculator(model=grown, dtype="float64")
    assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-10)
    ni = _frames(1, metal="Ni")[0]
    ni.calc = EquiformerCalculator(model=grown, dtype="float64")
    assert np.isfinite(ni.get_potential_energy())


def test_refit_recovers_energy_zero_offsets(ckpt: Path) -> None:
    model = load_checkpoint(ckpt).double()
    frames = _frames(6)
    offsets = {"H": -3.0, "O": 1.5, "Cu": 0.25, "Pt": 7.0}
    # labels: the model's own energies shifted by per-element offsets (a calculator with another zero)
    for atoms in frames:
        probe = atoms.copy()
        probe.calc = EquiformerCalculator(model=model, dtype="float64")
        shifted = probe.get_potential_energy() + sum(offsets[s] for s in atoms.get_chemical_symbols())
        atoms.calc = SinglePointCalculator(atoms, energy=shifted, forces=atoms.get_forces())
    samples = samples_from_atoms(frames, model.config.cutoff)
    delta = refit_energy_references(model, samples)
    got = dict(zip(model.elements, delta))
    for el in ("H", "O", "Cu"):  # Pt is absent from the data: untouched
        assert got[el] == pytest.approx(offsets[el], abs=1e-6)
    assert got["Pt"] == 0.0


@pytest.mark.slow
def test_train_init_from_starts_from_the_checkpoint(ckpt: Path, tmp_path: Path) -> None:
    train_file, val_file = tmp_path / "train.extxyz", tmp_path / "val.extxyz"
    write(train_file, _frames(8, seed=1))
    write(val_file, _frames(2, seed=2))
    config = tmp_path / "ft.yaml"
    out = tmp_path / "run"
    config.write_text(
        f"train: {train_file}\nval: {val_file}\nout: {out}\npreset: tiny\nbatch_size: 2\nmax_steps: 6\n"
        "val_every: 3\nthreads: 1\nmax_val: 2\nenergy_weight: 1.0\n"
    )
    assert cli_main(["train", str(config), "--init-from", str(ckpt)]) == 0
    base = load_checkpoint(ckpt)
    tuned = load_checkpoint(out / "last.safetensors")
    meta = tuned.metadata["training"]["config"]
    assert meta["init_from"] == str(ckpt) and meta["lr"] == pytest.approx(2e-4)
    # same architecture; the weights moved a little from the checkpoint's, not from a fresh init
    assert tuned.config.to_dict() == base.config.to_dict()
    w0 = torch.cat([p.flatten() for p in base.parameters()])
    w1 = torch.cat([p.flatten() for p in tuned.parameters()])
    fresh = torch.cat([p.flatten() for p in type(base)(config=base.config).parameters()])
    assert (w1 - w0).norm() < 0.1 * (fresh - w0).norm()
    # the energy zero was refit to EMT's: the validation error is far below the checkpoint's own
    from ase.io import read

    val = read(val_file, ":")
    probe = [a.copy() for a in val]
    for a in probe:
        a.calc = EquiformerCalculator(model=base)
    before = np.mean([abs(p.get_potential_energy() - v.get_potential_energy()) / len(v) for p, v in zip(probe, val)])
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["val_e_mae_atom"] < 0.2 * before, (history[-1]["val_e_mae_atom"], before)
