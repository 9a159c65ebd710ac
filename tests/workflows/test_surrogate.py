"""The model-steered reference relaxation (issue 28's ML+RX cost): it must end at a minimum of the *reference*
(the reference's own forces below fmax), in the reference's basin, in fewer reference calls than BFGS when the
model is close, and still converge (falling back to BFGS) when the model is wrong."""

from __future__ import annotations

import ase.db
import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.optimize import BFGS

from equiformer_calc import EquiformerCalculator, screen_adsorbates
from equiformer_calc.surfaces import build_surface
from equiformer_calc.workflows.surrogate import CorrectedCalculator, SurrogateOptimizer

from ..helpers import make_model


class CountingEMT(EMT):
    """EMT that counts its evaluations (the reference's cost)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        self.calls += 1
        super().calculate(atoms, properties, system_changes)


class StretchedEMT(Calculator):
    """A model close to EMT but not EMT: EMT of the structure scaled by ``s`` about the origin (its lattice
    constant is EMT's / s), plus a tilt of the energy along x: its minima are off EMT's."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, s: float = 1.02, sign: float = 1.0, tilt: float = 0.05) -> None:
        super().__init__()
        self.s, self.sign, self.tilt = s, sign, tilt

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        probe = self.atoms.copy()
        probe.set_constraint()
        probe.set_cell(probe.cell * self.s, scale_atoms=True)
        probe.calc = EMT()
        e = self.sign * probe.get_potential_energy() + self.tilt * float(np.sum(self.atoms.positions[:, 0]))
        f = self.sign * probe.get_forces() * self.s
        f[:, 0] -= self.tilt
        self.results = {"energy": e, "forces": f}


def _o_on_cu(shift=(0.4, 0.3, 0.5)):
    """O near (not at) the fcc hollow of a small Cu(111) slab, bottom layer fixed: a relaxation's start."""
    slab = build_surface("Cu", "111", size=(2, 2, 3), vacuum=5.0)
    top = slab.positions[:, 2].max()
    hollow = slab.positions[np.argsort(slab.positions[:, 2])[-4:]].mean(axis=0)
    slab.append("O")
    slab.positions[-1] = [hollow[0] + shift[0], hollow[1] + shift[1], top + 1.3 + shift[2]]
    z = slab.positions[:, 2]
    slab.set_constraint(FixAtoms(indices=np.where(z < z.min() + 0.5)[0]))
    return slab


def _fmax(atoms) -> float:
    probe = atoms.copy()
    probe.calc = EMT()
    return float(np.linalg.norm(probe.get_forces(), axis=1).max())


def test_corrected_calculator_matches_the_reference_at_its_anchor_and_the_model_elsewhere_up_to_a_plane():
    atoms = _o_on_cu()
    model = StretchedEMT()
    ref = atoms.copy()
    ref.calc = EMT()
    m = atoms.copy()
    m.calc = model
    corr = CorrectedCalculator(model, atoms.positions, ref.get_potential_energy() - m.get_potential_energy(),
                               ref.get_forces(apply_constraint=False) - m.get_forces(apply_constraint=False))
    probe = atoms.copy()
    probe.calc = corr
    assert probe.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(probe.get_forces(apply_constraint=False), ref.get_forces(apply_constraint=False), atol=1e-9)
    # its forces are the negative gradient of its energy (finite differences) away from the anchor too
    probe.positions[-1] += [0.1, -0.05, 0.2]
    f = probe.get_forces(apply_constraint=False)[-1]
    h = 1e-4
    for k in range(3):
        plus, minus = probe.copy(), probe.copy()
        plus.positions[-1, k] += h
        minus.positions[-1, k] -= h
        plus.calc, minus.calc = corr, corr
        num = -(plus.get_potential_energy() - minus.get_potential_energy()) / (2 * h)
        assert f[k] == pytest.approx(num, abs=1e-5)


def test_a_close_model_reaches_the_references_minimum_in_fewer_reference_calls_than_bfgs():
    start = _o_on_cu()
    plain = start.copy()
    plain.calc = CountingEMT()
    assert BFGS(plain, logfile=None).run(fmax=0.01, steps=200)
    steered = start.copy()
    steered.calc = CountingEMT()
    opt = SurrogateOptimizer(steered, StretchedEMT())
    assert opt.run(fmax=0.01, steps=200)
    assert _fmax(steered) < 0.01  # converged by the reference's own forces, constraints applied
    fixed = start.constraints[0].index
    np.testing.assert_allclose(steered.positions[fixed], start.positions[fixed])  # fixed atoms never moved
    assert steered.get_potential_energy() == pytest.approx(plain.get_potential_energy(), abs=5e-3)  # the same basin
    np.testing.assert_allclose(steered.positions, plain.positions, atol=0.03)
    assert steered.calc.calls < plain.calc.calls  # the point of it
    assert steered.calc.calls == opt.nsteps + 1  # every step is one reference call; reading the result costs none


def test_a_wrong_model_is_rejected_and_the_relaxation_still_converges_on_the_reference():
    """A model that points uphill (EMT upside down): its first steps raise the reference energy and are
    rejected (the trust radius shrinks) while the learnt Hessian difference corrects the surrogate, or BFGS on
    the reference finishes: a bad model costs calls, never the answer."""
    start = _o_on_cu()
    steered = start.copy()
    steered.calc = CountingEMT()
    opt = SurrogateOptimizer(steered, StretchedEMT(s=1.0, sign=-1.0, tilt=0.0))
    assert opt.run(fmax=0.05, steps=300)
    assert opt.rejected >= 1
    assert _fmax(steered) < 0.05
    plain = start.copy()
    plain.calc = EMT()
    BFGS(plain, logfile=None).run(fmax=0.05, steps=300)
    assert steered.get_potential_energy() == pytest.approx(plain.get_potential_energy(), abs=5e-3)


class FailsAfter(StretchedEMT):
    """The close model, until its ``n``-th call: then it raises (a model that breaks mid-run)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.calls = n, 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        self.calls += 1
        if self.calls > self.n:
            raise RuntimeError("this model cannot evaluate anything any more")
        super().calculate(atoms, properties, system_changes)


def test_a_model_that_fails_hands_over_to_bfgs_on_the_reference():
    start = _o_on_cu()
    steered = start.copy()
    steered.calc = CountingEMT()
    opt = SurrogateOptimizer(steered, FailsAfter(3))
    assert opt.run(fmax=0.05, steps=300)
    assert opt.fallback_steps >= 1 and _fmax(steered) < 0.05
    assert steered.calc.calls == opt.nsteps + 1


def test_optimizer_refuses_atoms_without_a_reference_and_a_bad_trust_region():
    atoms = _o_on_cu()
    with pytest.raises(ValueError, match="calculator"):
        SurrogateOptimizer(atoms, EMT())
    atoms.calc = EMT()
    with pytest.raises(ValueError, match="trust"):
        SurrogateOptimizer(atoms, EMT(), trust=1.0, max_trust=0.5)


def test_screen_refine_relax_with_the_surrogate_ends_at_emt_minima(tmp_path):
    """ML+RX steered by the (tiny, untrained) screen model: every reference row is an EMT minimum (EMT forces
    below fmax on the free atoms), recorded as steered, under its own keys; a rerun pays nothing."""
    calc = EquiformerCalculator(model=make_model(3))
    slabs = {"Cu-fcc111": build_surface("Cu", "111", size=(2, 2, 3), vacuum=5.0)}
    kw = dict(db=tmp_path / "s.db", calculator=calc, steps=3, fix_bottom=1, progress=False, site_kinds=["fcc", "ontop"],
              refine="emt", top_k=2, refine_mode="relax", refine_optimizer="surrogate")
    res = screen_adsorbates(slabs, ["O"], **kw)
    db = ase.db.connect(tmp_path / "s.db")
    refs = list(db.select(kind="reference"))
    assert refs and all(r.task_key.startswith("ref-relax-surrogate/") and r.ref_optimizer == "surrogate" for r in refs)
    for r in refs:
        atoms = r.toatoms()
        atoms.calc = EMT()
        assert r.ref_energy == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
        free = np.ones(len(atoms), dtype=bool)
        for c in atoms.constraints:
            free[c.index] = False
        assert np.linalg.norm(atoms.get_forces(apply_constraint=False)[free], axis=1).max() <= 0.05 + 1e-9
        assert r.ref_fmax <= 0.05 and r.ref_converged  # the recorded forces are the converged ones
    (group,) = res.summary
    assert np.isfinite(group["e_ads_ref"]) and res.refine.optimizer == "surrogate"
    again = screen_adsorbates(slabs, ["O"], **kw)
    assert again.refine.paid_calls == 0 and again.refine.calls == res.refine.calls
    with pytest.raises(ValueError, match="refine_optimizer"):
        screen_adsorbates(slabs, ["O"], **{**kw, "db": tmp_path / "t.db", "refine_optimizer": "newton"})


def test_an_interrupted_steered_relaxation_resumes_on_its_journal_whatever_the_models_last_bits(tmp_path):
    """A steered relaxation stopped after 3 reference calls (a killed job), resumed with a model whose arithmetic
    differs in its last bits (another machine, thread count or worker): without the journalled positions the
    resumed path leaves the journal at once and pays for the calls again; with them (``replay``, what
    ``run_reference`` does) every journalled call is replayed, only the rest is paid for, and the relaxation
    still ends at a minimum of the reference."""
    from equiformer_calc.data.labellers import JournaledCalculator, LabelJournal, LabelStats, resolve_labeller

    labeller = resolve_labeller("emt")
    path = tmp_path / "task.jsonl"

    def relax(model, replay, steps, journal_path=path):
        journal = LabelJournal(journal_path)
        stats = LabelStats()
        atoms = _o_on_cu()
        atoms.calc = JournaledCalculator(labeller, stats, journal, record_positions=True)
        opt = SurrogateOptimizer(atoms, model, replay=journal.positions() if replay else ())
        converged = opt.run(fmax=0.01, steps=steps)
        journal.close()
        return atoms, stats, opt, converged

    _, first, _, converged = relax(StretchedEMT(), True, steps=3)  # the run that was killed
    assert not converged and first.calls == 4
    assert len(LabelJournal(path).positions()) == 4
    other_bits = StretchedEMT(s=1.02 * (1 + 1e-12))  # the same model, other rounding

    import shutil

    copy = tmp_path / "copy.jsonl"
    shutil.copy(path, copy)
    _, lost, _, _ = relax(other_bits, False, steps=200, journal_path=copy)
    assert lost.replayed == 1  # only the start: the recomputed path missed every other journalled call

    atoms, stats, opt, converged = relax(other_bits, True, steps=200)
    assert converged and _fmax(atoms) < 0.01
    assert stats.replayed == 4 and opt.replayed_steps == 3
    assert stats.calls + stats.replayed == opt.nsteps + 1  # every reference point once, paid or replayed
    uninterrupted = _o_on_cu()
    uninterrupted.calc = CountingEMT()
    SurrogateOptimizer(uninterrupted, StretchedEMT()).run(fmax=0.01, steps=200)
    assert atoms.get_potential_energy() == pytest.approx(uninterrupted.get_potential_energy(), abs=2e-3)


def test_a_replay_from_another_start_is_ignored():
    start = _o_on_cu()
    start.calc = CountingEMT()
    elsewhere = start.positions.copy()
    elsewhere[-1, 2] += 0.3
    opt = SurrogateOptimizer(start, StretchedEMT(), replay=[elsewhere, elsewhere + 0.1])
    assert opt.run(fmax=0.05, steps=100)
    assert opt.replayed_steps == 0 and _fmax(start) < 0.05
