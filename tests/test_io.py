"""``equiformer_calc.io`` (atomic writes, figures that leave matplotlib's global state alone) and
``equiformer_calc.runtime`` (thread settings)."""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from equiformer_calc.io import atomic_path, write_csv, write_json
from equiformer_calc.runtime import set_threads, single_threaded_blas


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "table.csv"
    write_csv(target, ["a", "b"], [[1, 0.1 + 0.2]])
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("torn")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]
    rows = list(csv.reader(target.open()))
    assert rows == [["a", "b"], ["1", repr(0.1 + 0.2)]] and float(rows[1][1]) == 0.1 + 0.2  # full precision


def test_write_json_is_strict(tmp_path):
    path = write_json({"x": np.float32(1.5), "nan": float("nan"), "n": np.int64(3), "ok": np.bool_(True),
                       "t": (1, 2)}, tmp_path / "sub" / "r.json")
    assert json.loads(path.read_text()) == {"x": 1.5, "nan": None, "n": 3, "ok": True, "t": [1, 2]}


def test_plots_leave_the_global_backend_and_pyplot_alone(tmp_path):
    """A notebook user's backend stays what it was and no pyplot figure is opened (fresh process)."""
    code = f"""
import sys
import matplotlib
matplotlib.use("pdf")
from pathlib import Path
from equiformer_calc.workflows._common import plot_lines
from equiformer_calc.workflows.screening import plot_heatmap
out = Path({str(tmp_path)!r})
plot_lines(out / "a.png", [0, 1, 2], [{{"e": [1.0, 2.0, 1.5]}}], "step", ["eV"])
plot_heatmap([{{"surface": "Cu", "adsorbate": "O", "e_ads_min": -1.0}}], out / "b.png")
assert matplotlib.get_backend() == "pdf", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in ("a.png", "b.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_set_threads():
    before = torch.get_num_threads()
    try:
        set_threads(2)
        assert torch.get_num_threads() == 2
        set_threads(None)  # leaves the setting as it is
        assert torch.get_num_threads() == 2
        with pytest.raises(ValueError, match="threads must be a positive number"):
            set_threads(-1)
    finally:
        torch.set_num_threads(before)


def test_single_threaded_blas_restores_the_setting():
    from equiformer_calc.runtime import _openblas_thread_controls

    controls = _openblas_thread_controls()
    if not controls:
        pytest.skip("no OpenBLAS loaded in this process")
    original = [get() for get, _ in controls]
    try:
        for _, set_ in controls:
            set_(2)
        before = [get() for get, _ in controls]
        with single_threaded_blas():
            assert all(get() == 1 for get, _ in controls)
        assert [get() for get, _ in controls] == before
    finally:
        for n, (_, set_) in zip(original, controls):
            set_(n)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    """Issue 27, item 6: every atomic writer made 0600 files (``tempfile.mkstemp``), so results were
    unreadable by the user's group whatever the umask. Now they get 0666 less the umask, as files
    made by ``open`` do: CSV, JSON, text, PNG and checkpoints."""
    from equiformer_calc.checkpoint import save_checkpoint
    from equiformer_calc.io import current_umask, new_figure, save_figure, write_text_atomic

    from .helpers import make_model

    old = os.umask(umask)
    try:
        assert current_umask() == umask
        written = [
            write_csv(tmp_path / "t.csv", ["a"], [[1.0]]),
            write_json({"a": 1}, tmp_path / "r.json"),
            save_figure(new_figure((2, 2)), tmp_path / "p.png"),
            save_checkpoint(make_model(0), tmp_path / "m.safetensors"),
        ]
        write_text_atomic(tmp_path / "x.txt", "x")
        written.append(tmp_path / "x.txt")
        with open(tmp_path / "plain.txt", "w") as f:  # what open() gives, for comparison
            f.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == mode
    for path in written:
        assert stat.S_IMODE(Path(path).stat().st_mode) == mode, path


def test_atomic_rewrite_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    target = tmp_path / "shared.json"
    write_json({"v": 1}, target)
    target.chmod(0o664)
    write_json({"v": 2}, target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o664 and json.loads(target.read_text()) == {"v": 2}


_PROGRESS_SCRIPT = """
import time
from equiformer_calc.io import progress
for _ in progress(range(6), desc="steps", leave=False):
    time.sleep(0.05)
with progress(total=4, desc="frames") as bar:
    for _ in range(4):
        bar.update()
        time.sleep(0.05)
"""


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal():
    """Issue 27, item 11: progress bars written to a log file were carriage-return spam. Into a
    pipe they are now whole lines (no ``\\r``), one per interval; ``off`` silences them."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EQUIFORMER_CALC_PROGRESS_INTERVAL": "0.01"}
    done = subprocess.run([sys.executable, "-c", _PROGRESS_SCRIPT], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    lines = done.stderr.splitlines()
    assert len([x for x in lines if x.startswith("steps:")]) >= 2 and lines[-1].startswith("frames: 100%")
    assert "4/4" in lines[-1]
    quiet = subprocess.run([sys.executable, "-c", _PROGRESS_SCRIPT], capture_output=True, text=True, timeout=120,
                           env={**env, "EQUIFORMER_CALC_PROGRESS_INTERVAL": "off"})
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_progress_is_a_live_bar_on_a_terminal():
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    try:
        done = subprocess.run([sys.executable, "-c", _PROGRESS_SCRIPT], stderr=follower, stdout=subprocess.DEVNULL,
                              timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
        os.close(follower)
        chunks = []
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal is closed once everything is read
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(leader)
    assert done.returncode == 0
    assert b"\r" in b"".join(chunks) and b"frames: 100%" in b"".join(chunks)


def test_every_progress_bar_goes_through_io_progress():
    """No module but ``io`` imports tqdm itself (the call sites use ``io.progress``)."""
    import ast

    import equiformer_calc

    root = Path(equiformer_calc.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path == root / "io.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "tqdm" or n.startswith("tqdm.") for n in names):
                offenders.append(str(path.relative_to(root)))
    assert offenders == []
