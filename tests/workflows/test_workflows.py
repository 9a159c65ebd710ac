"""Workflows: relax (optimizers, constraints, cell, CLI), MD (NVE drift, NVT, neighbour-list skin
reuse), batched relaxation (== one-by-one, shrinking batches), adsorbate screening (end to end,
resume after a crash). All on tiny random-weight models and small systems."""

from __future__ import annotations

import csv
import json

import ase.db
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc100, fcc111
from ase.constraints import FixAtoms
from ase.io import read, write

from equiformer_calc import EquiformerCalculator, relax, relax_batch, run_md, screen_adsorbates
from equiformer_calc.checkpoint import save_checkpoint
from equiformer_calc.cli import main as cli_main
from equiformer_calc.graph import NeighborListCache, build_graph, neighbor_list, structure_from_atoms
from equiformer_calc.predictor import compute
from equiformer_calc.surfaces import (
    ANOMALIES,
    bottom_fixed_mask,
    build_surface,
    find_sites,
    layer_indices,
    place_adsorbate_on_site,
    reference_potentials,
    slab_from_any,
)

from ..helpers import bulk_cell, make_model

# seed 1 gives a tiny random model whose energy surface holds these small systems together
SEED = 1


@pytest.fixture(scope="module")
def model():
    return make_model(SEED)


@pytest.fixture(scope="module")
def calc64(model):
    return EquiformerCalculator(model=model, dtype="float64")


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    return str(save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"))


def small_slab(facet=fcc111, ads: str = "O", site: str = "ontop", seed: int = 0) -> Atoms:
    atoms = facet("Cu", (2, 2, 3), vacuum=5.0)
    add_adsorbate(atoms, ads, 1.8, site)
    atoms.rattle(0.05, seed=seed)
    return atoms


class CountingPredict:
    """Wraps Predictor.predict to record the batch size of every model call."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.original = predictor.predict
        self.sizes: list[int] = []

    def __enter__(self):
        def counted(structures, *args, **kwargs):
            structures = list(structures)
            self.sizes.append(len(structures))
            return self.original(structures, *args, **kwargs)

        self.predictor.predict = counted
        return self

    def __exit__(self, *exc):
        del self.predictor.predict


# ----------------------------------------------------------------------------------------- relax


@pytest.mark.parametrize("optimizer", ["BFGS", "FIRE", "LBFGS"])
def test_relax_optimizers(calc64, optimizer):
    atoms = small_slab()
    before = atoms.positions.copy()
    res = relax(atoms, calculator=calc64, optimizer=optimizer, fmax=0.05, steps=150, fix_bottom=1)
    assert res.converged and 0 < res.nsteps < 150
    assert len(res.energies) == len(res.fmax) == res.nsteps + 1
    assert res.final_energy < res.initial_energy
    assert res.fmax[-1] < 0.05
    np.testing.assert_array_equal(atoms.positions, before)  # the input is not modified
    assert res.atoms.get_potential_energy() == pytest.approx(res.final_energy)
    bottom = layer_indices(atoms.positions[:, 2]) == 0
    assert bottom.sum() == 4
    np.testing.assert_array_equal(res.atoms.positions[bottom], before[bottom])  # fixed layer stayed
    assert np.abs(res.atoms.positions[~bottom] - before[~bottom]).max() > 1e-3


def test_fix_bottom_layers_and_height():
    atoms = fcc111("Cu", (2, 2, 4), vacuum=5.0)
    add_adsorbate(atoms, "O", 1.8, "fcc")
    z = atoms.positions[:, 2]
    assert layer_indices(z).max() == 4  # 4 metal layers + the adsorbate
    assert bottom_fixed_mask(atoms, fix_bottom=2).sum() == 8
    assert bottom_fixed_mask(atoms, fix_bottom=0).sum() == 0
    assert bottom_fixed_mask(atoms, fix_below=z.min() + 0.1).sum() == 4
    with pytest.raises(ValueError, match="number of layers"):
        bottom_fixed_mask(atoms, fix_bottom=1.5)


def test_relax_keeps_existing_constraints(calc64):
    atoms = small_slab()
    atoms.set_constraint(FixAtoms(indices=[len(atoms) - 1]))  # hold the adsorbate
    res = relax(atoms, calculator=calc64, steps=20, fix_bottom=1)
    np.testing.assert_array_equal(res.atoms.positions[-1], atoms.positions[-1])
    assert len(res.atoms.constraints) == 2


def test_relax_cell(calc64, tmp_path):
    atoms = bulk("Cu", "fcc", a=3.5)
    atoms.set_cell(atoms.cell.array @ np.array([[1.02, 0.01, 0.0], [0.0, 0.99, 0.0], [0.0, 0.0, 1.0]]), scale_atoms=True)
    res = relax(atoms, calculator=calc64, cell=True, fmax=0.05, steps=200, trajectory=tmp_path / "cell.traj")
    assert res.converged
    assert not np.allclose(res.atoms.cell.array, atoms.cell.array)
    # FrechetCellFilter's cell "forces" are the virial over the number of atoms
    assert np.abs(res.atoms.get_stress()).max() * res.atoms.get_volume() / len(atoms) < 0.05
    frames = read(tmp_path / "cell.traj", ":")
    assert len(frames) == res.nsteps + 1
    assert frames[-1].get_potential_energy() == pytest.approx(res.final_energy)
    with pytest.raises(ValueError, match="periodic in all three"):
        relax(small_slab(), calculator=calc64, cell=True)


@pytest.mark.parametrize("fmt", ["vasp", "extxyz"])
def test_cli_relax_writes_outputs(checkpoint, tmp_path, fmt):
    src = tmp_path / ("POSCAR" if fmt == "vasp" else "in.extxyz")
    write(src, small_slab(), format=fmt)
    out = tmp_path / "run" / "out.traj"
    rc = cli_main(["relax", str(src), "--checkpoint", checkpoint, "--fix-bottom", "1", "--steps", "15",
                   "--optimizer", "fire", "-o", str(out)])
    assert rc == 0
    frames = read(out, ":")
    final = read(tmp_path / "run" / "out_final.extxyz")
    assert final.get_potential_energy() == pytest.approx(frames[-1].get_potential_energy())
    with open(tmp_path / "run" / "out_energies.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(frames) and float(rows[-1]["energy_eV"]) == pytest.approx(final.get_potential_energy())
    assert (tmp_path / "run" / "out_energies.png").read_bytes()[:4] == b"\x89PNG"


# -------------------------------------------------------------------------------------------- MD


def test_nve_energy_drift_is_small(calc64):
    res = run_md(small_slab(), calculator=calc64, ensemble="nve", temperature=300, timestep=0.5, steps=80,
                 fix_bottom=1, progress=False)
    assert len(res.time_fs) == 81 and res.time_fs[-1] == pytest.approx(40.0)
    assert res.temperature[0] == pytest.approx(300, rel=1e-6)  # initial velocities rescaled to T
    assert np.ptp(res.total) < 2e-3
    assert abs(res.drift_per_atom_per_ps) < 1e-3  # eV/atom/ps


def test_nvt_runs_and_is_reproducible(model, tmp_path):
    kwargs = dict(ensemble="nvt", temperature=500, timestep=1.0, steps=25, friction=0.05, seed=7,
                  fix_bottom=1, progress=False, log_interval=5)
    a = run_md(small_slab(), calculator=EquiformerCalculator(model=model), trajectory=tmp_path / "a.traj", **kwargs)
    b = run_md(small_slab(), calculator=EquiformerCalculator(model=model), **kwargs)
    np.testing.assert_array_equal(a.atoms.positions, b.atoms.positions)
    assert np.all(np.isfinite(a.temperature)) and a.temperature.mean() > 50
    assert len(read(tmp_path / "a.traj", ":")) == 6  # steps 0, 5, ..., 25


def test_cli_md_writes_outputs(checkpoint, tmp_path):
    src = tmp_path / "slab.extxyz"
    write(src, small_slab())
    out = tmp_path / "md.traj"
    assert cli_main(["md", str(src), "--checkpoint", checkpoint, "--ensemble", "nve", "--steps", "10",
                     "--timestep", "0.5", "--log-interval", "5", "--fix-bottom", "1", "-o", str(out)]) == 0
    assert len(read(out, ":")) == 3
    with open(tmp_path / "md_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 5, 10]
    assert set(rows[0]) >= {"time_fs", "epot_eV", "ekin_eV", "etot_eV", "temperature_K"}
    assert (tmp_path / "md_energy.png").stat().st_size > 1000


def test_edges_beyond_cutoff_contribute_exactly_zero(model):
    """The envelope is identically 0 at r >= cutoff: a graph with extra edges out to cutoff + 1 A
    gives the same energy and forces (the skin list is filtered anyway, for speed)."""
    m = make_model(SEED).double()
    for atoms in (small_slab(), bulk_cell()):
        s = structure_from_atoms(atoms)
        g, g_skin = build_graph(s, m.cutoff), build_graph(s, m.cutoff + 1.0)
        assert g_skin.num_edges > g.num_edges
        a, b = compute(m, g), compute(m, g_skin)
        assert abs(float(a["energy"] - b["energy"])) < 1e-10
        assert float((a["forces"] - b["forces"]).abs().max()) < 1e-10


def test_neighbor_cache_returns_exactly_the_fresh_list():
    rng = np.random.default_rng(0)
    cache = NeighborListCache(skin=0.4)
    atoms = bulk_cell()
    for step in range(12):
        atoms.positions += rng.normal(scale=0.03, size=atoms.positions.shape)
        if step == 8:
            atoms.set_cell(atoms.cell.array * 1.01, scale_atoms=True)  # a cell change forces a search
        s = structure_from_atoms(atoms)
        for got, want in zip(cache.edges(s, 4.0), neighbor_list(s, 4.0)):
            np.testing.assert_array_equal(got, want)
    assert 2 <= cache.builds < 12 and cache.builds + cache.reuses == 12


def test_md_with_skin_equals_rebuilding_every_step(model):
    """Same trajectory to 1e-10 (float64) with the neighbour list reused between steps."""
    runs = {}
    for skin in (0.0, 0.3):
        calc = EquiformerCalculator(model=model, dtype="float64", skin=skin)
        runs[skin] = run_md(bulk_cell(), calculator=calc, ensemble="nve", temperature=1500, timestep=2.0, steps=25,
                            progress=False)
    a, b = runs[0.0], runs[0.3]
    assert a.neighbor_builds is None and 1 < b.neighbor_builds < 25  # reused, and rebuilt when needed
    np.testing.assert_allclose(b.potential, a.potential, rtol=0, atol=1e-10)
    np.testing.assert_allclose(b.atoms.positions, a.atoms.positions, rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------------- relax_batch


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


# ------------------------------------------------------------------------------------- screening


def test_site_finding_and_placement():
    kinds111 = sorted(s.kind for s in find_sites(build_surface("Cu", "111", size=(2, 2, 3))))
    assert kinds111 == ["bridge", "fcc", "hcp", "ontop"]
    kinds100 = sorted(s.kind for s in find_sites(build_surface("Pt", "100", size=(2, 2, 3))))
    assert kinds100 == ["bridge", "hollow", "ontop"]
    slab = build_surface("Cu", "111", size=(2, 2, 3))
    site = next(s for s in find_sites(slab) if s.kind == "ontop")
    system = place_adsorbate_on_site(slab, "CO", site)
    assert system.get_chemical_symbols()[-2:] == ["C", "O"]  # binding atom first, i.e. down
    assert system.positions[-1, 2] > system.positions[-2, 2] > slab.positions[:, 2].max() + 1.5


def test_pymatgen_slab_with_none_tags_converts():
    from pymatgen.analysis.adsorption import AdsorbateSiteFinder
    from pymatgen.core import Molecule
    from pymatgen.io.ase import AseAtomsAdaptor

    slab = fcc111("Cu", (2, 2, 3), vacuum=6.0)
    slab.pbc = True
    slab.positions[:, 2] += 5.0  # straddles the periodic boundary along c
    slab.wrap()
    structure = AseAtomsAdaptor.get_structure(slab)
    finder = AdsorbateSiteFinder(structure)
    with_o = finder.add_adsorbate(Molecule(["O"], [[0, 0, 0]]), finder.find_adsorption_sites()["ontop"][0])
    assert None in with_o.site_properties["tags"]
    atoms = slab_from_any(with_o)
    assert atoms.pbc.tolist() == [True, True, False]
    assert atoms.get_chemical_symbols()[-1] == "O"
    z = atoms.positions[:, 2]
    assert z[-1] == z.max() and np.ptp(z) < 8.0  # contiguous slab, adsorbate on top


def test_pymatgen_slab_generator_slab_with_oblique_c():
    """SlabGenerator's (111) slab has a tilted third vector: after conversion it is along z, the
    slab is unchanged, and every site gets its adsorbate at the binding distance."""
    from pymatgen.core import Lattice, Structure
    from pymatgen.core.surface import SlabGenerator

    a = 3.92
    bulk_pt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Pt"], [[0, 0, 0]])
    slab = SlabGenerator(bulk_pt, (1, 1, 1), min_slab_size=2.5 * a / 3**0.5, min_vacuum_size=10.0,
                         center_slab=True, in_unit_planes=False, primitive=True).get_slab()
    assert abs(slab.lattice.matrix[2] @ np.cross(*slab.lattice.matrix[:2])) < 0.999 * np.prod(slab.lattice.abc)
    atoms = slab_from_any(slab)
    np.testing.assert_allclose(atoms.cell.array[2, :2], 0.0, atol=1e-9)
    assert atoms.pbc.tolist() == [True, True, False] and len(layer_indices(atoms.positions[:, 2])) == len(slab)
    assert layer_indices(atoms.positions[:, 2]).max() == 2  # 3 contiguous layers
    sites = find_sites(atoms)
    assert sorted(s.kind for s in sites) == ["bridge", "fcc", "hcp", "ontop"]
    for site in sites:
        system = place_adsorbate_on_site(atoms, "O", site)
        assert system.get_distances(-1, range(len(atoms)), mic=True).min() == pytest.approx(1.95, abs=1e-6)


def test_reference_potentials_scheme():
    mu = reference_potentials({"H2": -6.0, "H2O": -14.0, "CO": -15.0, "N2": -16.0})
    assert mu == {"H": -3.0, "O": -8.0, "C": -7.0, "N": -8.0}


def screen_kwargs(calc, tmp_path, **kw):
    return dict(db=tmp_path / "screen.db", calculator=calc, fmax=0.05, steps=4, fix_bottom=1,
                out_dir=tmp_path / "out", progress=False, **kw)


def test_screen_end_to_end(model, tmp_path):
    calc = EquiformerCalculator(model=model)
    slabs = {"Cu-fcc111": build_surface("Cu", "111", size=(2, 2, 3), vacuum=5.0)}
    res = screen_adsorbates(slabs, ["O", "OH"], **screen_kwargs(calc, tmp_path))
    db = ase.db.connect(tmp_path / "screen.db")
    rows = list(db.select())
    keys = [r.task_key for r in rows]
    assert len(keys) == len(set(keys)) == 4 + 1 + 2 * 4  # gas refs, slab, 2 adsorbates x 4 sites
    assert res.computed == 13 and res.skipped == 0
    gas = {r.molecule: r.energy for r in rows if r.kind == "gas"}
    mu = reference_potentials(gas)
    e_slab = next(r.energy for r in rows if r.kind == "slab")
    for r in (r for r in rows if r.kind == "adsorbate"):
        n_slab = 12
        expected = r.energy - e_slab - sum(mu[s] for s in r.toatoms().get_chemical_symbols()[n_slab:])
        assert r.e_ads == pytest.approx(expected, abs=1e-9)
        assert r.status == "done" and r.model_hash == db.metadata["model_hash"]
        assert len(r.data["step_energies"]) == r.nsteps + 1
    assert len(res.summary) == 2
    for s in res.summary:  # the minimum over sites without any of AdsorbML's four anomalies
        site_rows = [r for r in rows if r.kind == "adsorbate" and r.adsorbate == s["adsorbate"]]
        valid = [r.e_ads for r in site_rows
                 if not (r.desorbed or r.dissociated or r.surface_changed or r.intercalated)]
        assert s["n_sites"] == 4 and s["n_valid"] == len(valid) and s["n_anomalous"] == 4 - len(valid)
        assert all(r.anomalies == ",".join(k for k in ANOMALIES if r.get(k)) for r in site_rows)
        if valid:
            assert s["e_ads_min"] == pytest.approx(min(valid))
        else:  # (a random model may well break OH apart)
            assert np.isnan(s["e_ads_min"]) and s["site"] == ""
    with open(tmp_path / "out" / "screen_summary.csv") as f:
        assert [r["adsorbate"] for r in csv.DictReader(f)] == ["O", "OH"]
    assert (tmp_path / "out" / "screen_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "out" / "screen_sites.csv").exists()


def test_screen_resumes_after_a_crash(model, tmp_path):
    calc = EquiformerCalculator(model=model)
    slabs = {"Cu-fcc100": build_surface("Cu", "100", size=(2, 2, 3), vacuum=5.0)}
    written: list[str] = []

    def crash_after_seven(key: str, row_id: int) -> None:
        written.append(key)
        if len(written) == 7:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        screen_adsorbates(slabs, ["O", "CO"], callback=crash_after_seven, **screen_kwargs(calc, tmp_path))
    db = ase.db.connect(tmp_path / "screen.db")
    first = {r.task_key: (r.id, r.mtime, r.energy) for r in db.select()}
    assert list(first) == written  # everything finished before the crash is there, nothing else

    res = screen_adsorbates(slabs, ["O", "CO"], **screen_kwargs(calc, tmp_path))
    rows = {r.task_key: r for r in db.select()}
    assert len(rows) == db.count() == 4 + 1 + 2 * 3  # no duplicates (Cu(100): 3 sites)
    assert res.skipped == 7 and res.computed == db.count() - 7
    for key, (row_id, mtime, energy) in first.items():  # finished rows untouched
        assert (rows[key].id, rows[key].mtime, rows[key].energy) == (row_id, mtime, energy)

    with CountingPredict(calc.predictor) as counter:  # finished work: nothing to do
        again = screen_adsorbates(slabs, ["O", "CO"], **screen_kwargs(calc, tmp_path))
    assert counter.sizes == [] and again.computed == 0 and db.count() == len(rows)
    assert [s["e_ads_min"] for s in again.summary] == [s["e_ads_min"] for s in res.summary]


def test_screen_refuses_another_model(model, tmp_path):
    slabs = {"Cu-fcc111": build_surface("Cu", "111", size=(2, 2, 3), vacuum=5.0)}
    screen_adsorbates(slabs, ["O"], **screen_kwargs(EquiformerCalculator(model=model), tmp_path, site_kinds=["ontop"]))
    other = EquiformerCalculator(model=make_model(SEED + 1))
    with pytest.raises(ValueError, match="another model"):
        screen_adsorbates(slabs, ["O"], **screen_kwargs(other, tmp_path, site_kinds=["ontop"]))


def test_cli_screen(checkpoint, tmp_path):
    rc = cli_main(["screen", "--metals", "Cu", "--facets", "111", "--adsorbates", "O", "--size", "2x2x3",
                   "--site-kinds", "ontop,fcc", "--steps", "3", "--fix-bottom", "1", "--checkpoint", checkpoint,
                   "--db", str(tmp_path / "s.db"), "--out-dir", str(tmp_path / "out")])
    assert rc == 0
    with open(tmp_path / "out" / "screen_summary.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["surface"] == "Cu-fcc111" and row["adsorbate"] == "O" and row["n_sites"] == "2"
    assert json.loads(json.dumps(ase.db.connect(tmp_path / "s.db").metadata))["settings"]["steps"] == 3


def test_public_api():
    import equiformer_calc
    import equiformer_calc.workflows as wf

    for name in ("relax", "run_md", "relax_batch", "screen_adsorbates"):
        assert getattr(equiformer_calc, name) is getattr(wf, name)
    assert torch.get_num_threads() >= 1
