"""The hole check (workflows/hole_check.py, benchmarks/hole_check.py).

* its definition, on EMT references: EMT as the student keeps every EMT minimum (no move, drop exactly 0),
  and a student with an artificial hole (EMT plus a deep well 1.5 A beside the adsorbate) fails on both
  counts, with the drop equal to what the well gives minus what EMT says the move costs;
* the shipped default on the 48 committed relaxation references: every failing task is one that its card
  lists (with an explanation), and the card's list was measured on these very weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.io import write
from ase.optimize import BFGS

from equiformer_calc.surfaces import build_slab, fixed_mask, place_adsorbate
from equiformer_calc.workflows.hole_check import MAX_DROP, MAX_MOVE, hole_check

ROOT = Path(__file__).resolve().parents[2]


def _references(folder: Path) -> Path:
    """Two EMT relaxation references (O and H on Cu(111)), relaxed tightly, in datagen's layout."""
    records, frames = [], []
    for k, ads in enumerate(("O", "H")):
        slab = build_slab("Cu", "fcc111", (2, 2, 3), a=3.6)
        atoms = place_adsorbate(slab, ads, np.zeros(2) + 0.3, np.random.default_rng(k))
        atoms.calc = EMT()
        BFGS(atoms, logfile=None).run(fmax=0.005, steps=300)
        frame = atoms.copy()
        frame.calc = None
        frame.info.update(labeller="emt", task_id=f"t{k}")
        frame.new_array("fixed", fixed_mask(atoms))
        frames.append(frame)
        records.append({"task_id": f"t{k}", "metal": "Cu", "facet": "fcc111", "adsorbate": ads, "site": "fcc",
                        "relaxed_energy": float(atoms.get_potential_energy())})
    folder.mkdir(parents=True, exist_ok=True)
    write(str(folder / "relax_relaxed.extxyz"), frames, format="extxyz")
    (folder / "relax_tasks.json").write_text(json.dumps(records))
    return folder


class _Holey(Calculator):
    """EMT plus a Gaussian well of depth ``depth`` eV (width 0.5 A) for the adsorbate's first atom,
    centred ``offset`` A beside where it starts (the tagged-2 atom of the first structure it sees)."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, depth: float = 3.0, offset: float = 1.5) -> None:
        super().__init__()
        self.depth, self.offset, self.centres = depth, offset, {}
        self.emt = EMT()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:  # type: ignore[override]
        super().calculate(atoms, properties, system_changes)
        i = int(np.flatnonzero(self.atoms.get_tags() == 2)[0])
        key = len(self.atoms)  # one structure per size in this test
        if key not in self.centres:
            self.centres[key] = self.atoms.positions[i] + (self.offset, 0.0, 0.0)
        self.emt.calculate(self.atoms, ["energy", "forces"], all_changes)
        d = self.atoms.positions[i] - self.centres[key]
        w = -self.depth * np.exp(-(d @ d) / (2 * 0.5**2))
        forces = self.emt.results["forces"].copy()
        forces[i] += w * d / 0.5**2  # -grad of the well
        self.results = {"energy": self.emt.results["energy"] + w, "free_energy": self.emt.results["energy"] + w,
                        "forces": forces}


def test_definition_on_emt(tmp_path: Path) -> None:
    data = _references(tmp_path / "refs")
    same = hole_check(EMT(), data, labeller="emt")
    assert same["summary"]["n_failing"] == 0
    for t in same["tasks"]:
        assert t["max_displacement"] < 0.05
        assert t["drop"] == pytest.approx(0.0, abs=1e-9)  # same calculator: the same energies over the same path

    holey = hole_check(_Holey(), data, labeller="emt")
    assert holey["summary"]["n_failing"] == 2
    for t in holey["tasks"]:
        assert set(t["reasons"]) == {"moved", "below_teacher"}
        assert t["max_displacement"] > MAX_MOVE and t["moved_role"] == "adsorbate"
        # drop = student's descent - teacher's: the well (about -depth) minus EMT's cost of the move
        emt_cost = t["e_teacher_end"] - t["e_teacher_start"]
        assert emt_cost > 0  # the references are EMT minima
        assert t["drop"] == pytest.approx(t["e_student_end"] - t["e_student_start"] - emt_cost)
        assert t["drop"] < -MAX_DROP
        assert "moved" in t["explanation"]


@pytest.mark.slow
def test_shipped_default_has_no_unlisted_holes() -> None:
    import sevenn  # noqa: F401 - the teacher is part of the test extra: CI must run this check

    from equiformer_calc.checkpoint import resolve_checkpoint

    path = resolve_checkpoint("pbe-distilled-small")
    card = json.loads(path.with_suffix(".card.json").read_text())
    section = card.get("hole_check")
    assert section, "the default's card has no 'hole_check' section: run python benchmarks/hole_check.py --update-card"
    assert section["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest(), (
        "the card's hole-check list was measured on other weights: rerun python benchmarks/hole_check.py --update-card"
    )
    allowed = {f["task_id"] for f in section["failures"]}
    assert all(f["explanation"] for f in section["failures"])
    result = hole_check(path, ROOT / "checkpoints" / "pbe-distilled-small-data")
    failing = set(result["summary"]["failing"])
    unlisted = sorted(failing - allowed)
    assert not unlisted, f"new holes not explained in the card: {unlisted}: " + "; ".join(
        t["explanation"] for t in result["tasks"] if t["task_id"] in unlisted)
