"""Readers of users' training files (equiformer_calc.data.readers) and train/evaluate reading
through them: MACE-style extxyz keys, ASE databases, VASP outputs (every ionic step), fairchem
.aselmdb files written by fairchem's own backend (ase-db-backends) and read without unpickling."""

from __future__ import annotations

import json
import pickle
import re
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc111
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.io import read, write

from equiformer_calc.data.readers import LabelError, LabelKeys, read_frames

from ..helpers import make_model

MACE_KEYS = LabelKeys("REF_energy", "REF_forces", "REF_stress")


def labelled_frames() -> list[Atoms]:
    """Two slabs with adsorbates (FixAtoms, pbc TTF) and two strained bulk cells (with stress),
    labelled by EMT."""
    frames = []
    for k, site in enumerate(("fcc", "ontop")):
        slab = fcc111("Cu", (2, 2, 3), vacuum=5.0)
        add_adsorbate(slab, "O", 1.8, site)
        slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag == 3]))
        slab.rattle(0.05, seed=k)
        frames.append(slab)
    for k, a in enumerate((3.55, 3.66)):
        b = bulk("Cu", "fcc", a=a, cubic=True)
        b.rattle(0.05, seed=10 + k)
        frames.append(b)
    for atoms in frames:
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.get_forces()
        if atoms.pbc.all():
            atoms.get_stress()
    return frames


def assert_same_labels(got: list[Atoms], ref: list[Atoms], atol: float = 1e-12) -> None:
    """Same structures and labels; ``atol`` 1e-7 for text formats (extxyz writes 8 decimals)."""
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g.numbers, r.numbers)
        np.testing.assert_allclose(g.positions, r.positions, rtol=0, atol=atol)
        np.testing.assert_allclose(g.cell.array, r.cell.array, rtol=0, atol=atol)
        np.testing.assert_array_equal(g.pbc, r.pbc)
        assert g.get_potential_energy() == pytest.approx(r.get_potential_energy(), abs=atol)
        np.testing.assert_allclose(g.get_forces(apply_constraint=False), r.get_forces(apply_constraint=False), rtol=0, atol=atol)
        if r.pbc.all():
            np.testing.assert_allclose(g.get_stress(), r.get_stress(), rtol=0, atol=atol)
        else:
            assert "stress" not in g.calc.results


def write_mace_extxyz(frames: list[Atoms], path: Path, drop_forces_of: int | None = None) -> None:
    """MACE-style file: labels as REF_energy / REF_forces / REF_stress, no calculator results."""
    out = []
    for k, atoms in enumerate(frames):
        a = atoms.copy()
        a.calc = None
        a.info["REF_energy"] = atoms.get_potential_energy()
        if k != drop_forces_of:
            a.arrays["REF_forces"] = atoms.get_forces(apply_constraint=False)
        if atoms.pbc.all():
            a.info["REF_stress"] = atoms.get_stress(voigt=False)
        out.append(a)
    write(path, out, format="extxyz")


# --------------------------------------------------------------------------------- extxyz keys
def test_extxyz_with_mace_keys(tmp_path):
    frames = labelled_frames()
    write_mace_extxyz(frames, tmp_path / "mace.xyz")
    got = read_frames(tmp_path / "mace.xyz", keys=MACE_KEYS)
    assert_same_labels(got, frames, atol=1e-7)
    assert "REF_energy" not in got[0].info and "REF_forces" not in got[0].arrays
    # the same file under the default keys has no labels: the error says which and what exists
    with pytest.raises(LabelError, match=r"mace.xyz, frame 0: no energy label 'energy'.*REF_energy"):
        read_frames(tmp_path / "mace.xyz")


def test_extxyz_standard_keys_and_missing_label_error(tmp_path):
    frames = labelled_frames()
    write(tmp_path / "std.extxyz", frames)
    assert_same_labels(read_frames(tmp_path / "std.extxyz"), frames, atol=1e-7)
    write_mace_extxyz(frames, tmp_path / "broken.xyz", drop_forces_of=2)
    with pytest.raises(LabelError, match=r"broken.xyz, frame 2: no forces label 'REF_forces'"):
        read_frames(tmp_path / "broken.xyz", keys=MACE_KEYS)
    with pytest.raises(FileNotFoundError, match="nope.xyz"):
        read_frames(tmp_path / "nope.xyz")


# ---------------------------------------------------------------------------------- ASE db
def test_ase_db_with_calculator_results_and_custom_keys(tmp_path):
    from ase.db import connect

    frames = labelled_frames()
    with connect(tmp_path / "data.db") as db:
        for atoms in frames:
            db.write(atoms, kind="slab" if not atoms.pbc.all() else "bulk")
    got = read_frames(tmp_path / "data.db")
    assert_same_labels(got, frames)
    assert [a.info["kind"] for a in got] == ["slab", "slab", "bulk", "bulk"]
    assert isinstance(got[0].constraints[0], FixAtoms)
    # labels kept as key-value pairs (energy) and data (forces) under custom names
    with connect(tmp_path / "custom.db") as db:
        for atoms in frames:
            a = atoms.copy()
            db.write(a, dft_energy=atoms.get_potential_energy(), data={"dft_forces": atoms.get_forces(apply_constraint=False)})
    got = read_frames(tmp_path / "custom.db", keys=LabelKeys("dft_energy", "dft_forces", "dft_stress"))
    for g, r in zip(got, frames):
        assert g.get_potential_energy() == pytest.approx(r.get_potential_energy(), abs=1e-12)
        np.testing.assert_allclose(g.get_forces(apply_constraint=False), r.get_forces(apply_constraint=False), atol=1e-12)


def test_database_url_goes_through_ase_backend():
    """A PostgreSQL URL is handed to ase.db.connect (ase-db-backends' PostgreSQL backend); with no
    server at that address the error is the driver's, naming the address, not a file error."""
    pytest.importorskip("psycopg2", reason="ase-db-backends (PostgreSQL driver) is not installed")
    with pytest.raises(Exception, match="127.0.0.1") as info:
        read_frames("postgresql://nobody:secret@127.0.0.1:9/none")
    assert not isinstance(info.value, FileNotFoundError)


# ---------------------------------------------------------------------------------- ase.io
VASP_DATA = Path(__import__("ase").__file__).parent / "test" / "testdata" / "vasp"


@pytest.mark.skipif(not (VASP_DATA / "vasprun_pstress.xml").exists(), reason="this ase build ships no VASP test data")
def test_vasprun_every_ionic_step(tmp_path):
    """ASE's own VASP test file, its single <calculation> repeated as three ionic steps with
    shifted energies and positions: every step becomes a frame."""
    text = (VASP_DATA / "vasprun_pstress.xml").read_text()
    start, end = text.index("<calculation>"), text.index("</calculation>") + len("</calculation>")
    block = text[start:end]

    def step(k: int) -> str:
        shifted = re.sub(r'(<i name="e_(?:fr|0|wo)_energy">\s*)(-?\d+\.\d+)',
                         lambda m: f"{m.group(1)}{float(m.group(2)) - 0.1 * k:.8f}", block)
        # move the first atom along x (fractional coordinates of the step's structure)
        return re.sub(r'(<varray name="positions" >\s*<v>\s*)(-?\d+\.\d+)',
                      lambda m: f"{m.group(1)}{float(m.group(2)) + 0.01 * k:.8f}", shifted, count=1)

    path = tmp_path / "vasprun.xml"
    path.write_text(text[:start] + "\n".join(step(k) for k in range(3)) + text[end:])
    frames = read_frames(path)
    reference = read(path, ":")
    assert len(frames) == len(reference) == 3
    energies = [a.get_potential_energy() for a in frames]
    np.testing.assert_allclose(np.diff(energies), [-0.1, -0.1], atol=1e-6)
    assert np.abs(frames[1].positions - frames[0].positions).max() > 0.01
    for g, r in zip(frames, reference):
        np.testing.assert_allclose(g.get_forces(), r.get_forces(), atol=1e-12)
        np.testing.assert_allclose(g.get_stress(), r.get_stress(), atol=1e-12)


@pytest.mark.skipif(not (VASP_DATA / "OUTCAR_example_1").exists(), reason="this ase build ships no VASP test data")
def test_outcar(tmp_path):
    shutil.copy(VASP_DATA / "OUTCAR_example_1", tmp_path / "OUTCAR")
    frames = read_frames(tmp_path / "OUTCAR")
    reference = read(tmp_path / "OUTCAR", ":")
    assert len(frames) == len(reference) >= 1
    assert frames[-1].get_potential_energy() == pytest.approx(reference[-1].get_potential_energy())
    np.testing.assert_allclose(frames[-1].get_forces(), reference[-1].get_forces())
    # the free energy is a label too (VASP users often train on it)
    free = read_frames(tmp_path / "OUTCAR", keys=LabelKeys(energy_key="free_energy"))
    assert free[-1].get_potential_energy() == pytest.approx(reference[-1].get_potential_energy(force_consistent=True))


# ---------------------------------------------------------------------------------- aselmdb
def write_aselmdb(frames: list[Atoms], path: Path) -> None:
    """Written by fairchem's own writer: ase.db.connect(*.aselmdb) is ase-db-backends' LMDB
    backend, which fairchem-core depends on for its datasets."""
    pytest.importorskip("ase_db_backends", reason="ase-db-backends (fairchem's aselmdb writer) is not installed")
    from ase.db import connect

    with connect(str(path)) as db:
        for k, atoms in enumerate(frames):
            db.write(atoms, sid=k, data={"note": f"frame {k}"})


def test_aselmdb_written_by_fairchem_backend_is_read_without_unpickling(tmp_path, monkeypatch):
    pytest.importorskip("lmdb", reason="the [lmdb] extra is not installed")
    frames = labelled_frames()
    write_aselmdb(frames, tmp_path / "data.aselmdb")

    def no_pickle(*args, **kwargs):
        raise AssertionError("the reader unpickled something")

    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    got = read_frames(tmp_path / "data.aselmdb")
    assert_same_labels(got, frames)
    assert [a.info["sid"] for a in got] == [0, 1, 2, 3]
    assert got[0].info["note"] == "frame 0"
    assert isinstance(got[0].constraints[0], FixAtoms)
    np.testing.assert_array_equal(got[0].constraints[0].index, frames[0].constraints[0].index)


def test_aselmdb_folder_and_deleted_rows(tmp_path):
    pytest.importorskip("lmdb", reason="the [lmdb] extra is not installed")
    from ase.db import connect

    frames = labelled_frames()
    folder = tmp_path / "omat-like"
    folder.mkdir()
    write_aselmdb(frames[:2], folder / "data.0000.aselmdb")
    write_aselmdb(frames[2:], folder / "data.0001.aselmdb")
    assert_same_labels(read_frames(folder), frames)
    with connect(str(folder / "data.0000.aselmdb")) as db:
        db.delete([1])
    assert_same_labels(read_frames(folder), frames[1:])


def test_aselmdb_plain_json_rows_and_pickled_rows(tmp_path):
    """Rows written as plain (orjson-style) JSON are read too; a pickled LMDB (the old OC20 S2EF
    format) is refused with an explanation instead of being unpickled."""
    lmdb = pytest.importorskip("lmdb", reason="the [lmdb] extra is not installed")
    atoms = labelled_frames()[2]
    row = {
        "numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(), "cell": atoms.cell.array.tolist(),
        "pbc": atoms.pbc.tolist(), "energy": atoms.get_potential_energy(), "forces": atoms.get_forces().tolist(),
        "stress": atoms.get_stress().tolist(), "ctime": 1.0, "mtime": 1.0, "user": "x", "unique_id": "abc",
        "key_value_pairs": {"sid": 7},
    }
    env = lmdb.open(str(tmp_path / "plain.aselmdb"), subdir=False, map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"1", zlib.compress(json.dumps(row).encode()))
        txn.put(b"nextid", zlib.compress(b"2"))
    env.close()
    got = read_frames(tmp_path / "plain.aselmdb")
    assert_same_labels(got, [atoms])
    assert got[0].info["sid"] == 7

    env = lmdb.open(str(tmp_path / "old.lmdb"), subdir=False, map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"1", pickle.dumps({"pos": [[0.0, 0.0, 0.0]]}))
        txn.put(b"nextid", zlib.compress(b"2"))
    env.close()
    with pytest.raises(ValueError, match="row 1: not a zlib-compressed JSON ASE row.*unpickling"):
        read_frames(tmp_path / "old.lmdb")
    env = lmdb.open(str(tmp_path / "oc20.lmdb"), subdir=False, map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"0", pickle.dumps({"pos": [[0.0, 0.0, 0.0]]}))
        txn.put(b"length", pickle.dumps(1))
    env.close()
    with pytest.raises(ValueError, match="oc20.lmdb: no 'nextid' entry.*looks pickled"):
        read_frames(tmp_path / "oc20.lmdb")


# ------------------------------------------------------------------------ train and evaluate
@pytest.mark.slow
def test_train_and_evaluate_read_through_the_readers(tmp_path):
    pytest.importorskip("lmdb", reason="the [lmdb] extra is not installed")
    from equiformer_calc.checkpoint import save_checkpoint
    from equiformer_calc.cli import main as cli_main
    from equiformer_calc.train.trainer import TrainConfig, train

    frames = labelled_frames()
    write_aselmdb(frames, tmp_path / "train.aselmdb")
    from ase.db import connect

    with connect(tmp_path / "val.db") as db:
        for atoms in frames[1:3]:
            db.write(atoms)
    cfg = TrainConfig(train=str(tmp_path / "train.aselmdb"), val=str(tmp_path / "val.db"), out=str(tmp_path / "run"),
                      preset="tiny", batch_size=2, max_steps=2, val_every=2, warmup_steps=1, threads=1, max_val=2,
                      elements=["O", "Cu"])
    summary = train(cfg)
    assert summary["steps"] == 2 and np.isfinite(summary["best_val_loss"])

    # evaluate: a MACE-keyed extxyz gives exactly the metrics of the same labels under ASE's names
    model = make_model(0)
    ckpt = save_checkpoint(model, tmp_path / "tiny.safetensors")
    write(tmp_path / "std.extxyz", frames)
    write_mace_extxyz(frames, tmp_path / "mace.xyz")
    results = []
    for name, extra in (("std.extxyz", []), ("mace.xyz", ["--energy-key", "REF_energy", "--forces-key", "REF_forces",
                                                          "--stress-key", "REF_stress"])):
        out = tmp_path / f"eval-{name}"
        assert cli_main(["evaluate", str(ckpt), str(tmp_path / name), "--out", str(out), "--dtype", "float64",
                         "--no-progress", *extra]) == 0
        results.append(json.loads((out / "metrics.json").read_text())["overall"])
    assert results[0] == results[1]
    assert results[0]["n_frames"] == 4 and results[0]["n_stress"] == 2


@pytest.mark.parametrize("suffix, opener", [(".xz", "lzma"), (".gz", "gzip"), (".bz2", "bz2")])
def test_compressed_extxyz_reads_the_same_frames(tmp_path, suffix, opener) -> None:
    """Compressed files are decompressed once (ASE's extxyz reader seeks back to every frame, which on a
    compressed stream re-decompresses from the start each time) and give the same frames."""
    import importlib

    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from equiformer_calc.data.readers import read_frames

    frames = []
    for k in range(5):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f, stress=s)
        atoms.info["label"] = f"frame{k}"
        frames.append(atoms)
    plain = tmp_path / "data.extxyz"
    write(plain, frames)
    packed = tmp_path / f"data.extxyz{suffix}"
    with importlib.import_module(opener).open(packed, "wt") as fh:
        fh.write(plain.read_text())
    a, b = read_frames(plain), read_frames(packed)
    assert [x.info["label"] for x in b] == [f"frame{k}" for k in range(5)]
    for x, y in zip(a, b):
        assert np.array_equal(x.positions, y.positions) and x.get_potential_energy() == y.get_potential_energy()
        assert np.array_equal(x.get_forces(), y.get_forces()) and np.array_equal(x.get_stress(), y.get_stress())
