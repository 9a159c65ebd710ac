"""``workflows.batch.relax_batch``: equal to one-by-one relaxations, shrinking batches, failures
isolated."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import fcc100, fcc111
from ase.constraints import FixAtoms

from equiformer_calc import relax, relax_batch
from equiformer_calc.surfaces import layer_indices

from .shared import CountingPredict, small_slab


def batch_systems() -> list[Atoms]:
    # systems that all three optimizers relax in 10-30 steps on this random model
    systems = [small_slab(fcc111, "O", "bridge", 0), small_slab(fcc100, "N", "hollow", 0), small_slab(fcc111, "N", "fcc", 0)]
    for s in systems:
        s.set_constraint(FixAtoms(mask=layer_indices(s.positions[:, 2]) == 0))
    return systems


@pytest.mark.parametrize("optimizer", ["FIRE", "BFGS", "LBFGS"])
def test_relax_batch_matches_one_by_one(calc64, optimizer):
    systems = batch_systems()
    batched = relax_batch(systems, calculator=calc64, optimizer=optimizer, fmax=0.05, steps=60, progress=False)
    single = [relax(s, calculator=calc64, optimizer=optimizer, fmax=0.05, steps=60) for s in systems]
    for b, s, atoms in zip(batched, single, systems):
        assert b.error is None and b.converged and s.converged
        assert b.nsteps == s.nsteps
        assert abs(b.final_energy - s.final_energy) < 1e-3
        fixed = atoms.constraints[0].index
        np.testing.assert_array_equal(b.atoms.positions[fixed], atoms.positions[fixed])  # FixAtoms respected


def test_relax_batch_drops_converged_structures(calc64):
    systems = batch_systems()
    done = relax(systems[1], calculator=calc64, fmax=0.02, steps=100).atoms  # already relaxed
    systems[1] = done
    with CountingPredict(calc64.predictor) as counter:
        results = relax_batch(systems, calculator=calc64, optimizer="FIRE", fmax=0.05, steps=40, progress=False)
    nsteps = [r.nsteps for r in results]
    assert nsteps[1] == 0 and max(nsteps) > 5
    assert len(counter.sizes) == max(nsteps) + 1  # one model call per step
    assert counter.sizes[0] == 3 and counter.sizes == sorted(counter.sizes, reverse=True)  # batches shrink
    assert sum(counter.sizes) == sum(n + 1 for n in nsteps)  # nobody evaluated after it stopped


def test_relax_batch_isolates_a_failing_structure(calc64):
    bad = small_slab()
    bad.positions[-1] = bad.positions[0] + [0.0, 0.0, 0.05]  # overlapping atoms
    seen = []
    results = relax_batch([small_slab(), bad], calculator=calc64, steps=5, progress=False,
                          callback=lambda k, r: seen.append(k))
    assert results[0].error is None and results[0].nsteps == 5
    assert "overlap" in results[1].error
    assert sorted(seen) == [0, 1]


def test_relax_batch_records_a_structure_the_model_refuses(calc64):
    refused = small_slab()
    refused[0].symbol = "Fe"  # not an element of the model
    with pytest.raises(ValueError, match="structure 1: .*Fe"):
        relax_batch([small_slab(), refused], calculator=calc64, steps=3, progress=False)
    seen = []
    results = relax_batch([small_slab(), refused, small_slab(seed=1)], calculator=calc64, steps=3, progress=False,
                          invalid="record", callback=lambda k, r: seen.append(k))
    assert results[1].error.startswith("UnknownElementError") and "Fe" in results[1].error
    assert results[1].nsteps == 0 and results[1].energies == [] and seen[0] == 1 and sorted(seen) == [0, 1, 2]
    alone = relax_batch([small_slab(), small_slab(seed=1)], calculator=calc64, steps=3, progress=False)
    assert [r.energies for r in alone] == [results[0].energies, results[2].energies]  # as if it were absent


def test_relax_batch_with_bounded_concurrency(calc64):
    systems = batch_systems()
    a = relax_batch(systems, calculator=calc64, steps=10, max_concurrent=2, progress=False)
    b = relax_batch(systems, calculator=calc64, steps=10, progress=False)
    assert [abs(x.final_energy - y.final_energy) < 1e-9 for x, y in zip(a, b)] == [True] * 3
