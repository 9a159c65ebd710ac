"""Errors say what the user did (issue 27, item 8): ``--device cuda`` on a CPU build and the i-PI
client with no server said "this looks like a bug, report it"; ``convert-reference`` on random
bytes said the file "needs code to be unpickled", on a text file "unknown key 101"; ``predict``
reported "structure 23: ... structure 0: ..."; ``predict --out`` and ``convert-reference`` errors
were log lines, not ``equiformer-calc CMD: error:``. (``--version``: tests/cli/test_help.py.)"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.io import read, write

from equiformer_calc.checkpoint import CheckpointError, load_checkpoint
from equiformer_calc.cli import main


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def one_error_line(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if f"equiformer-calc {command}: error:" in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "looks like a bug" not in err
    return lines[0]


def test_unavailable_device_is_named(capsys, workdir):
    unavailable = "cuda:99" if torch.backends.cuda.is_built() else "cuda"
    with pytest.raises(SystemExit) as info:
        main(["relax", "x.xyz", "--device", unavailable])
    assert info.value.code == 2
    line = one_error_line(capsys.readouterr().err, "relax")
    assert f"argument --device: '{unavailable}' is not available" in line
    if not torch.backends.cuda.is_built():
        assert "CPU-only build" in line
    with pytest.raises(SystemExit):
        main(["evaluate", "m", "d.xyz", "--device", "gpu7"])
    assert "'gpu7' is not a torch device" in one_error_line(capsys.readouterr().err, "evaluate")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_ipi_without_a_server_says_so(capsys, workdir, checkpoint):
    write(workdir / "water.xyz", molecule("H2O"))
    port = _free_port()
    status = main(["ipi", "water.xyz", "--port", str(port), "--wait", "0.3", "--checkpoint", checkpoint])
    line = one_error_line(capsys.readouterr().err, "ipi")
    assert status == 2
    assert f"no i-PI server at localhost:{port} after waiting 0.3 s" in line and "start i-pi first" in line


@pytest.mark.parametrize("content, looks", [
    ("random", "binary data of no checkpoint format"),
    ("text", "a text file (first line: 'epoch,loss')"),
    ("gzip", "a gzip-compressed file (decompress it first: gunzip)"),
    ("empty", "an empty file"),
])
def test_convert_reference_on_a_file_that_is_not_a_checkpoint(capsys, workdir, content, looks):
    path = workdir / "best.pth.tar"
    if content == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif content == "text":
        path.write_text("epoch,loss\n1,0.5\n2,0.25\n")
    elif content == "gzip":
        with open(FIXTURES / "reference_md17_l3_small.safetensors", "rb") as f:
            path.write_bytes(gzip.compress(f.read()))
    else:
        path.write_bytes(b"")
    status = main(["convert-reference", "best.pth.tar", "out.safetensors", "--variant", "md17-l3", "--task-mean", "0",
                   "--task-std", "1"])
    line = one_error_line(capsys.readouterr().err, "convert-reference")
    assert status == 2
    assert f"best.pth.tar is not a checkpoint: it looks like {looks}" in line
    assert not (workdir / "out.safetensors").exists()


def test_convert_reference_errors_are_one_line(capsys, workdir):
    shutil.copy(FIXTURES / "reference_md17_l3_small.safetensors", workdir / "ref.safetensors")
    status = main(["convert-reference", "ref.safetensors", "out.safetensors", "--variant", "md17-l3"])
    line = one_error_line(capsys.readouterr().err, "convert-reference")
    assert status == 2 and "task_mean and task_std" in line and "(hint: " in line


def test_load_checkpoint_names_what_the_file_looks_like(tmp_path):
    text = tmp_path / "model.safetensors"
    text.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\n")
    with pytest.raises(CheckpointError, match="is not an equiformer-calc checkpoint: it looks like a text file"):
        load_checkpoint(text)
    pt = tmp_path / "ref.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, pt)
    with pytest.raises(CheckpointError, match="a zip archive .*convert-reference"):
        load_checkpoint(pt)


def test_predict_names_each_failed_structure_once(capsys, workdir, checkpoint):
    frames = [molecule("H2O"), molecule("CH4"), molecule("NH3"), Atoms("HH", positions=[[0, 0, 0], [0.05, 0, 0]])]
    write(workdir / "in.extxyz", frames)
    status = main(["predict", "in.extxyz", "--out", "out.extxyz", "--checkpoint", checkpoint, "--chunk-size", "8"])
    err = capsys.readouterr().err
    assert status == 1
    line = one_error_line(err, "predict")
    assert "1 of 4 structure(s) have no prediction (first: structure 3: StructureError: atoms 0 (H) and 1 (H) overlap" in line
    assert "structure 0" not in err, err
    out = read(workdir / "out.extxyz", ":")
    assert len(out) == 4 and "overlap" in out[3].info["predict_error"] and "structure 0" not in out[3].info["predict_error"]
    assert np.isfinite(out[0].get_potential_energy())


def test_predict_wrong_inputs_are_one_line_errors(capsys, workdir, checkpoint):
    status = main(["predict", "missing.extxyz", "--out", "out.extxyz", "--checkpoint", checkpoint])
    line = one_error_line(capsys.readouterr().err, "predict")
    assert status == 2 and "missing.extxyz" in line
    write(workdir / "in.extxyz", molecule("H2O"))
    status = main(["predict", "in.extxyz", "--out", "out.txt", "--checkpoint", checkpoint])
    line = one_error_line(capsys.readouterr().err, "predict")
    assert status == 2 and "output out.txt: write .extxyz, .xyz or .csv" in line
    assert sorted(os.listdir(workdir)) == ["in.extxyz"]


def test_a_device_this_machine_lacks_is_refused_at_set_up_in_the_python_api_too():
    """``EquiformerCalculator(device=...)`` and ``Predictor`` check the device when built (the
    CLI's ``--device`` check and this one are one function, ``runtime.check_device``)."""
    import torch

    from equiformer_calc import EquiformerCalculator
    from equiformer_calc.runtime import DeviceUnavailableError, check_device

    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceUnavailableError, match="not a torch device"):
        check_device("gpu0")
    if torch.cuda.is_available():
        bad = f"cuda:{torch.cuda.device_count()}"
        with pytest.raises(DeviceUnavailableError, match="CUDA GPU"):
            EquiformerCalculator(checkpoint="emt-small", device=bad)
    else:
        with pytest.raises(DeviceUnavailableError, match="cuda.* is not available"):
            EquiformerCalculator(checkpoint="emt-small", device="cuda")
