"""The default thread policy: threads per call from its size and from the competition for the cores.

The competition meter is tested against real processes (a busy child process is seen, this
process's own work is not) and against a written ``/proc/stat`` (per-CPU parsing, the affinity
filter, the minimum window); the predictor is tested to run its calls on the policy's threads.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import equiformer_calc.predictor as predictor_mod
import equiformer_calc.runtime as runtime
from equiformer_calc.predictor import Predictor
from equiformer_calc.runtime import (
    SMALL_CALL_EDGES,
    SPIN_COUNT,
    CompetitionMeter,
    call_threads,
    default_openmp_env,
    runnable_others,
    thread_policy,
)

from .helpers import bulk_cell, make_model

linux_proc = pytest.mark.skipif(not Path("/proc/stat").exists() or not hasattr(os, "sched_getaffinity"),
                                reason="the competition meter reads Linux's /proc/stat and affinity mask")


def test_policy_gives_a_core_to_each_busy_competitor():
    # spinning threads (sleeping=False): the rule must not depend on the wait policy this process chose at import
    assert thread_policy(50_000, cores=8, busy=0.0, sleeping=False) == 8
    assert thread_policy(50_000, cores=8, busy=0.4, sleeping=False) == 8  # noise below the threshold
    assert thread_policy(50_000, cores=8, busy=0.6, sleeping=False) == 7
    assert thread_policy(50_000, cores=8, busy=2.0, sleeping=False) == 6
    assert thread_policy(50_000, cores=2, busy=1.0, sleeping=False) == 1
    assert thread_policy(50_000, cores=2, busy=7.5, sleeping=False) == 1  # never below one
    assert thread_policy(50_000, cores=4, busy=None, sleeping=False) == 4  # unknown: every core
    # a small call on a quiet machine uses every core with briefly spinning threads...
    assert thread_policy(100, cores=2, busy=0.0, sleeping=False) == 2
    # ...but one thread when idle threads sleep (waking one costs more than it gains)
    assert thread_policy(SMALL_CALL_EDGES - 1, cores=2, busy=0.0, sleeping=True) == 1
    assert thread_policy(SMALL_CALL_EDGES, cores=2, busy=0.0, sleeping=True) == 2


def test_sleeping_threads_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    assert thread_policy(100, cores=2, busy=0.0) == 1
    monkeypatch.setenv("GOMP_SPINCOUNT", "10000")  # a spin count overrides the wait policy in libgomp
    assert thread_policy(100, cores=2, busy=0.0) == 2


def test_sleeping_threads_follow_the_call_size_whatever_the_competition():
    for busy in (0.0, 2.0):
        assert thread_policy(100, cores=2, busy=busy, sleeping=True) == 1
        assert thread_policy(SMALL_CALL_EDGES, cores=2, busy=busy, sleeping=True) == 2


def test_default_openmp_env_follows_the_competition_and_respects_the_users_choice():
    env: dict[str, str] = {}
    assert default_openmp_env(env, others=0) == "GOMP_SPINCOUNT"
    assert env == {"GOMP_SPINCOUNT": SPIN_COUNT}
    env = {}
    assert default_openmp_env(env, others=2) == "OMP_WAIT_POLICY"
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    for chosen in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "5"}):
        env = dict(chosen)
        assert default_openmp_env(env, others=0) is None
        assert env == chosen


def _busy_children(count: int) -> list[subprocess.Popen]:
    code = "import time\nend = time.monotonic() + 20\nwhile time.monotonic() < end: pass"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]
    time.sleep(0.5)  # running by now
    return procs


def _import_in_fresh_process() -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    code = ("import os, sys, equiformer_calc; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'), "
            "'torch' in sys.modules)")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()


@linux_proc
def test_importing_the_package_chooses_the_wait_policy_from_the_competition_before_torch_loads():
    # this test process waits for the child, so on an otherwise quiet machine nothing else runs; the
    # quiet half needs that machine (CI's is): a machine busy with other people's jobs for 10 s is said so
    end = time.monotonic() + 10.0
    time.sleep(0.05)  # idle OpenMP threads of earlier tests asleep
    while (others := runnable_others()) != 0 and time.monotonic() < end:
        time.sleep(0.2)
    if others:
        pytest.skip(f"{others} runnable processes of others for 10 s: this machine is not quiet, so the "
                    "quiet-machine half of this test cannot run (the busy half is covered by the meter tests)")
    assert _import_in_fresh_process() == [SPIN_COUNT, "None", "False"]
    # this process's own busy threads are not others
    end = time.monotonic() + 1.0
    worker = threading.Thread(target=lambda: [None for _ in iter(lambda: time.monotonic() < end, False)])
    worker.start()
    try:
        time.sleep(0.05)
        assert runnable_others() == 0
    finally:
        worker.join()
    procs = _busy_children(2)
    try:
        assert runnable_others() >= 2
        assert _import_in_fresh_process() == ["None", "PASSIVE", "False"]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def _write_stat(path: Path, busy_ticks: list[int]) -> None:
    # cpu lines: user nice system idle iowait irq softirq steal guest guest_nice
    lines = [f"cpu  {sum(busy_ticks)} 0 0 1000 0 0 0 0 0 0"]
    lines += [f"cpu{k} {t // 2} {t - t // 2 - 1} 0 1000 7 0 0 1 0 0" for k, t in enumerate(busy_ticks)]
    path.write_text("\n".join(lines + ["intr 12345", "ctxt 999"]) + "\n")


@linux_proc
def test_meter_parses_per_cpu_lines_of_its_affinity_mask(tmp_path):
    stat = tmp_path / "stat"
    cpus = sorted(os.sched_getaffinity(0))
    _write_stat(stat, [0] * (max(cpus) + 2))  # one CPU outside the mask
    meter = CompetitionMeter(min_window=0.2, stat_path=str(stat))
    assert meter.busy_cores() is None  # no window yet
    time.sleep(0.25)
    # every CPU of the mask busy for the whole window, the one outside it 10x that
    ticks = [0] * (max(cpus) + 2)
    window = 0.25
    for c in cpus:
        ticks[c] = round(window * os.sysconf("SC_CLK_TCK"))
    ticks[-1] = 10 * ticks[cpus[0]]
    _write_stat(stat, ticks)
    busy = meter.busy_cores()
    # len(cpus) cores busy over ~0.25 s, minus this process's tiny CPU time; the CPU outside is ignored
    assert busy is not None and len(cpus) * 0.75 < busy <= len(cpus) * 1.05
    # a window shorter than min_window keeps the previous value
    _write_stat(stat, [0] * (max(cpus) + 2))
    assert meter.busy_cores() == busy


@linux_proc
def test_meter_sees_a_busy_process_and_not_its_own_work():
    meter = CompetitionMeter(min_window=0.3)
    time.sleep(0.35)
    meter.busy_cores()  # start a fresh window
    time.sleep(0.5)
    background = meter.busy_cores()  # whatever else runs on this machine now
    if background is not None and background + 0.7 > len(os.sched_getaffinity(0)) - 0.1:
        pytest.skip(f"other processes keep {background:.1f} of {len(os.sched_getaffinity(0))} cores busy: no core is "
                    "free for the spinner to show up on (CI's quiet machine runs this)")
    # this process busy for 0.6 s: its own CPU time is not competition
    end = time.monotonic() + 0.6
    x = 0
    while time.monotonic() < end:
        x += 1
    own = meter.busy_cores()
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.monotonic() + 3\nwhile time.monotonic() < end: pass"])
    try:
        time.sleep(0.5)  # let it start
        meter.busy_cores()
        time.sleep(0.8)
        other = meter.busy_cores()
    finally:
        spinner.kill()
        spinner.wait()
    assert background is not None and own is not None and other is not None
    assert own < background + 0.5, (background, own)
    assert other > background + 0.7, (background, other)


def test_predictor_runs_each_call_on_the_policys_threads_and_restores(monkeypatch):
    # spinning OpenMP threads (the policy a quiet machine gets at import); a busy machine at import would
    # have chosen sleeping ones, whose rule does not look at the competition (tested above)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    seen = []
    real = predictor_mod.compute
    monkeypatch.setattr(predictor_mod, "compute", lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        meter = runtime.competition()
        monkeypatch.setattr(meter, "busy_cores", lambda: 0.0)  # quiet: every core of torch's setting
        Predictor(make_model(0), threads="auto").predict([bulk_cell()])
        monkeypatch.setattr(meter, "busy_cores", lambda: 1.0)  # one core taken by another process
        Predictor(make_model(0), threads="auto").predict([bulk_cell()])
        with call_threads(10, limit=1) as used:  # never more than asked
            assert used == 1 and torch.get_num_threads() == 1
        Predictor(make_model(0), threads=None).predict([bulk_cell()])  # torch's setting, untouched
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen == [2, 1, 2]
    with pytest.raises(ValueError, match="threads"):
        Predictor(make_model(0), threads=4)
