"""The executor seam on a real Dask LocalCluster of 2 worker processes (no mocks): screening,
labelling, evaluation and batch prediction give the same numbers as in-process; a SIGKILLed
worker loses nothing and duplicates nothing; a rerun after a killed client skips finished work;
a bad structure fails its own task only."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.db
import numpy as np
import pytest
from ase.build import add_adsorbate, fcc111
from ase.calculators.emt import EMT

from equiformer_calc import EquiformerCalculator
from equiformer_calc.checkpoint import save_checkpoint
from equiformer_calc.cli import main as cli_main
from equiformer_calc.distributed import SerialExecutor, open_executor, worker_model
from equiformer_calc.surfaces import build_surface
from equiformer_calc.workflows.screening import screen_adsorbates

from ..helpers import TINY_DATASET, make_model

distributed = pytest.importorskip("distributed")

SEED = 1  # as in test_workflows: a tiny random model that holds these small systems together


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def dask_executor(client):
    from equiformer_calc.distributed import DaskExecutor

    return DaskExecutor(client, torch_threads=1)


@pytest.fixture(scope="module")
def model():
    return make_model(SEED)


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    return str(save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"))


def slabs():
    return {"Cu-fcc111": build_surface("Cu", "111", size=(2, 2, 3), vacuum=5.0)}


def screen(calc, db, executor=None, **kw):
    args = dict(db=db, calculator=calc, fmax=0.05, steps=4, fix_bottom=1, progress=False, executor=executor)
    args.update(kw)
    return screen_adsorbates(slabs(), ["O", "OH"], **args)


def rows_by_key(db) -> dict:
    rows = list(ase.db.connect(db).select())
    keys = [r.task_key for r in rows]
    assert len(keys) == len(set(keys)), "a task has two rows"
    return {r.task_key: r for r in rows}


def assert_same_numbers(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].get("relaxed_energy") == b[key].get("relaxed_energy"), key
        assert np.array_equal(a[key].positions, b[key].positions), key
        assert np.array_equal(a[key].data["step_energies"], b[key].data["step_energies"]), key
        assert a[key].get("e_ads") == b[key].get("e_ads"), key


@pytest.fixture(scope="module")
def serial_reference(model, tmp_path_factory):
    """In-process screening in chunks of 2 (the chunking the Dask tests use)."""
    db = tmp_path_factory.mktemp("serial") / "screen.db"
    screen(EquiformerCalculator(model=model), db, SerialExecutor(), chunk_size=2)
    return rows_by_key(db)


# ------------------------------------------------------------------------------ executors


def test_executors_isolate_a_failing_task(dask_executor):
    for executor in (SerialExecutor(), dask_executor):
        outcomes = sorted(executor.map(math.sqrt, [4.0, -1.0, 9.0], name="sqrt"), key=lambda o: o.index)
        assert [o.value for o in outcomes] == [2.0, None, 3.0]
        assert outcomes[1].error == "ValueError: math domain error"
        assert outcomes[0].error is None and outcomes[2].error is None


def test_unregistered_model_and_bad_arguments_are_clear_errors():
    with pytest.raises(RuntimeError, match="not loaded in this process.*register_model"):
        worker_model("0123456789abcdef")
    with pytest.raises(ValueError, match="at most one"):
        with open_executor(scheduler="tcp://127.0.0.1:1", workers=2):
            pass
    with pytest.raises(ValueError, match="workers must be >= 1"):
        with open_executor(workers=0):
            pass


def test_model_is_loaded_once_per_worker(dask_executor, client, model):
    calc = EquiformerCalculator(model=model)
    key = dask_executor.register_model(calc)
    assert dask_executor.register_model(calc) == key  # same weights: same key, no second upload
    ids = client.run(lambda: id(worker_model(key)))  # the same object for every task of a worker
    again = client.run(lambda: id(worker_model(key)))
    assert len(ids) == 2 and ids == again


# ------------------------------------------------------------------------------ screening


@pytest.mark.slow
def test_screen_on_dask_equals_in_process(model, dask_executor, serial_reference, tmp_path):
    res = screen(EquiformerCalculator(model=model), tmp_path / "dask.db", dask_executor, chunk_size=2)
    assert res.computed == 13 and res.errors == {}
    assert_same_numbers(rows_by_key(tmp_path / "dask.db"), serial_reference)
    # one chunk per phase is exactly the in-process path (no executor): its numbers are unchanged
    screen(EquiformerCalculator(model=model), tmp_path / "plain.db")
    screen(EquiformerCalculator(model=model), tmp_path / "one.db", SerialExecutor(), chunk_size=100)
    assert_same_numbers(rows_by_key(tmp_path / "plain.db"), rows_by_key(tmp_path / "one.db"))


@pytest.mark.slow
def test_refinement_on_dask_equals_in_process(model, dask_executor, tmp_path):
    """Top-k verification (issue 28): the reference's relaxations run as tasks on the Dask workers; the
    reference rows are those of the in-process run, number for number."""
    calc = EquiformerCalculator(model=model)
    kw = dict(refine="emt", top_k=2, refine_mode="relax", site_kinds=["ontop", "fcc"])
    here = screen(calc, tmp_path / "serial.db", SerialExecutor(), chunk_size=2, **kw)
    there = screen(calc, tmp_path / "dask.db", dask_executor, chunk_size=2, **kw)
    assert there.refine.errors == {} and there.refine.calls == here.refine.calls > 0
    a, b = rows_by_key(tmp_path / "serial.db"), rows_by_key(tmp_path / "dask.db")
    refs = [k for k in a if k.startswith("ref-")]
    assert refs and sorted(refs) == sorted(k for k in b if k.startswith("ref-"))
    for key in refs:
        assert a[key].get("ref_energy") == b[key].get("ref_energy") and a[key].get("e_ads_ref") == b[key].get("e_ads_ref")
        assert np.array_equal(a[key].positions, b[key].positions), key


@pytest.mark.slow
def test_screen_survives_sigkill_of_a_worker(model, client, dask_executor, serial_reference, tmp_path):
    client.wait_for_workers(2)
    killed: list[int] = []

    def kill_a_busy_worker(key: str, row_id: int) -> None:
        if killed or not key.startswith("ads/"):
            return
        busy = [addr for addr, tasks in client.processing().items() if tasks]
        pids = client.run(os.getpid)
        assert busy, "no task in flight to kill"
        killed.append(pids[busy[0]])
        os.kill(pids[busy[0]], signal.SIGKILL)

    res = screen(EquiformerCalculator(model=model), tmp_path / "kill.db", dask_executor, chunk_size=2,
                 callback=kill_a_busy_worker)
    assert killed and res.errors == {} and res.computed == 13
    rows = rows_by_key(tmp_path / "kill.db")
    assert_same_numbers(rows, serial_reference)  # nothing lost, nothing twice, same numbers
    client.wait_for_workers(2, timeout=120)  # the nanny replaced the dead worker
    assert killed[0] not in client.run(os.getpid).values()


def test_results_fetched_before_their_workers_die_are_kept(client, dask_executor):
    """A finished task's result is fetched at once; when its worker dies before the consumer reads
    the outcome, the future's status turns "lost" but the value already in hand is the answer (the
    race that once failed the SIGKILL screening test above)."""
    client.wait_for_workers(2)
    outcomes = dask_executor.map(abs, [-i for i in range(8)], name="lost")
    got = [next(outcomes)]
    time.sleep(1.0)  # every other result is fetched and queued by now
    for pid in client.run(os.getpid).values():
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    got += list(outcomes)
    assert sorted((o.index, o.value, o.error) for o in got) == [(i, i, None) for i in range(8)]
    client.wait_for_workers(2, timeout=120)


@pytest.mark.slow
def test_screen_rerun_after_a_killed_client_skips_finished_work(
    model, checkpoint, client, dask_executor, serial_reference, tmp_path
):
    db = tmp_path / "screen.db"
    cmd = [sys.executable, "-m", "equiformer_calc.cli", "screen", "--metals", "Cu", "--facets", "111",
           "--size", "2x2x3", "--vacuum", "5", "--adsorbates", "O,OH", "--steps", "4", "--fix-bottom", "1",
           "--checkpoint", checkpoint, "--db", str(db), "--out-dir", str(tmp_path / "out"),
           "--scheduler", client.scheduler.address, "--chunk-size", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if db.exists() and ase.db.connect(db).count() >= 7:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the client finished before it could be killed"
    before = {k: (r.id, r.mtime) for k, r in rows_by_key(db).items()}
    assert 7 <= len(before) < 13

    calc = EquiformerCalculator(checkpoint=checkpoint)  # the same model as the killed CLI run
    res = screen(calc, db, dask_executor, chunk_size=1)
    rows = rows_by_key(db)
    assert len(rows) == 13 and res.skipped == len(before) and res.computed == 13 - len(before)
    for key, (row_id, mtime) in before.items():
        assert (rows[key].id, rows[key].mtime) == (row_id, mtime)
    again = screen(calc, db, dask_executor, chunk_size=1)
    assert again.computed == 0 and again.skipped == 13 and len(rows_by_key(db)) == 13


@pytest.mark.slow
def test_screen_bad_structure_fails_only_its_tasks(model, dask_executor, tmp_path):
    bad = fcc111("Cu", (2, 2, 3), vacuum=5.0)
    bad[5].symbol = "Fe"  # not an element of the model
    surfaces = {**slabs(), "CuFe": bad}
    res = screen_adsorbates(surfaces, ["O"], db=tmp_path / "s.db", calculator=EquiformerCalculator(model=model),
                            steps=3, fix_bottom=1, progress=False, out_dir=tmp_path / "out",
                            executor=dask_executor, chunk_size=3)
    bad_keys = {k for k in res.errors if "/CuFe" in k}
    assert "slab/CuFe" in bad_keys and set(res.errors) == bad_keys
    for key in bad_keys:
        assert "UnknownElementError" in res.errors[key] and "Fe" in res.errors[key]
    rows = rows_by_key(tmp_path / "s.db")
    assert all(rows[k].status == "failed" for k in bad_keys)
    good = [r for k, r in rows.items() if "/CuFe" not in k]
    assert all(r.status == "done" for r in good) and len(good) == 4 + 1 + 4
    by_surface = {r["surface"]: r for r in res.summary}
    assert by_surface["CuFe"]["n_failed"] == by_surface["CuFe"]["n_sites"] > 0
    assert by_surface["Cu-fcc111"]["n_failed"] == 0 and np.isfinite(by_surface["Cu-fcc111"]["e_ads_min"])
    with open(tmp_path / "out" / "screen_sites.csv") as f:
        errors = {r["surface"]: r["error"] for r in csv.DictReader(f)}
    assert "Fe" in errors["CuFe"] and errors["Cu-fcc111"] == ""


# -------------------------------------------------------------------- evaluate / predict


def labelled_frames(n: int = 6):
    frames = []
    for k in range(n):
        atoms = fcc111("Cu", (2, 2, 2), vacuum=5.0)
        add_adsorbate(atoms, "O", 1.6 + 0.1 * k, "fcc")
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        frames.append(atoms)
    return frames


@pytest.mark.slow
def test_evaluate_on_dask_equals_in_process(model, dask_executor, tmp_path):
    from ase.io import write

    from equiformer_calc.train.evaluate import evaluate

    path = tmp_path / "data.extxyz"
    write(path, labelled_frames(), format="extxyz")
    plain, p0 = evaluate(model, path, batch_size=2, by=[], return_predictions=True)
    fanned, p1 = evaluate(model, path, batch_size=2, by=[], return_predictions=True, executor=dask_executor,
                          batches_per_task=1)
    assert plain["overall"] == fanned["overall"]
    for name in ("energy", "forces", "stress"):
        assert np.array_equal(getattr(p0, name), getattr(p1, name), equal_nan=True)


@pytest.mark.slow
def test_predict_on_dask_equals_in_process_and_isolates_bad_structures(model, checkpoint, dask_executor, tmp_path):
    from equiformer_calc.workflows.predict import predict_file

    frames = labelled_frames(5)
    frames[3][0].symbol = "Fe"
    calc = EquiformerCalculator(model=model)
    serial = predict_file(frames, calculator=calc, chunk_size=2)
    fanned = predict_file(frames, calculator=calc, chunk_size=2, executor=dask_executor)
    assert set(serial.errors) == set(fanned.errors) == {3} and "Fe" in fanned.errors[3]
    for a, b in zip(serial.structures, fanned.structures):
        if a.calc is not None:
            assert a.get_potential_energy() == b.get_potential_energy()
            assert np.array_equal(a.get_forces(), b.get_forces())
    # and equal to the calculator one structure at a time, up to batching round-off
    assert fanned.structures[0].get_potential_energy() == pytest.approx(calc.get_potential_energy(frames[0]), abs=1e-4)

    src = tmp_path / "in.extxyz"
    from ase.io import write

    write(src, frames, format="extxyz")
    assert cli_main(["predict", str(src), "--out", str(tmp_path / "p.csv"), "--checkpoint", checkpoint,
                     "--chunk-size", "2"]) == 1  # one structure failed
    with open(tmp_path / "p.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["error"] != "" for r in table] == [False, False, False, True, False]
    from_file = predict_file(src, calculator=EquiformerCalculator(checkpoint=checkpoint), chunk_size=2)
    assert [float(r["energy"]) for r in table if not r["error"]] == [
        a.get_potential_energy() for a in from_file.structures if a.calc is not None]
    with open(tmp_path / "p_forces.csv") as f:
        assert len(list(csv.DictReader(f))) == 4 * len(frames[0])

    with ase.db.connect(tmp_path / "in.db") as db:  # an ASE database in: every row, exact positions
        for atoms in frames:
            db.write(atoms)
    from_db = predict_file(tmp_path / "in.db", calculator=calc, chunk_size=2)
    assert set(from_db.errors) == {3} and [a.info["db_id"] for a in from_db.structures] == [1, 2, 3, 4, 5]
    assert [a.get_potential_energy() for a in from_db.structures if a.calc is not None] == [
        a.get_potential_energy() for a in serial.structures if a.calc is not None]


# ------------------------------------------------------------------------------ labelling


class StopAfter:
    """A real executor whose client stops (as if killed) after ``n`` task results."""

    def __init__(self, executor, n):
        self.executor, self.n, self.submitted = executor, n, 0

    @property
    def n_workers(self):
        return self.executor.n_workers

    def map(self, fn, items, name="task"):
        items = list(items)
        self.submitted += len(items)
        for k, outcome in enumerate(self.executor.map(fn, items, name=name)):
            if k == self.n:
                raise KeyboardInterrupt("client killed")
            yield outcome


@pytest.mark.slow
def test_datagen_on_dask_is_byte_identical_and_resumes(dask_executor, tmp_path):
    from equiformer_calc.data.generate import generate_dataset

    serial = generate_dataset(tmp_path / "serial", seed=3, size=TINY_DATASET, progress=False)
    stopping = StopAfter(dask_executor, 4)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path / "dask", seed=3, size=TINY_DATASET, progress=False, executor=stopping)
    shards = sorted((tmp_path / "dask" / ".datagen-work" / "shards").glob("*.json"))
    assert len(shards) == 4  # every result that reached the client is checkpointed
    resumed = StopAfter(dask_executor, 10**9)
    fanned = generate_dataset(tmp_path / "dask", seed=3, size=TINY_DATASET, progress=False, executor=resumed)
    assert resumed.submitted == stopping.submitted - 4  # finished tasks are not sent again
    assert fanned["files"] == serial["files"]  # sizes and sha256 of every output file
