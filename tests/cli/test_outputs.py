"""Outputs never clobber inputs (issue 27, item 4): ``convert-reference ref.safetensors
ref.safetensors`` replaced the reference weights, ``relax in.traj -o in.traj`` left 3 of 5 frames.
Every command now refuses an output path that is one of its inputs, by name, through a symlink or
a hard link, with one line ``equiformer-calc CMD: error: output ... would overwrite the input ...``,
status 2 and the input untouched."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from ase.build import fcc111, molecule
from ase.io import read, write

from equiformer_calc.cli import main
from equiformer_calc.io import OutputIsInputError, same_file


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def refused(capsys, argv: list[str], command: str, needle: str) -> None:
    status = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if f"equiformer-calc {command}: error:" in line]
    assert status == 2, err
    assert len(lines) == 1 and "would overwrite the input" in lines[0] and needle in lines[0], err
    assert "Traceback" not in err


def test_same_file_sees_names_symlinks_and_hard_links(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("x")
    (tmp_path / "link.txt").symlink_to(a)
    os.link(a, tmp_path / "hard.txt")
    (tmp_path / "sub").mkdir()
    assert same_file(a, tmp_path / "sub" / ".." / "a.txt")
    assert same_file(tmp_path / "link.txt", a) and same_file(tmp_path / "hard.txt", a)
    assert not same_file(a, tmp_path / "other.txt")
    assert issubclass(OutputIsInputError, ValueError)


@pytest.mark.parametrize("how", ["same name", "symlink", "hard link"])
def test_convert_reference_refuses_to_overwrite_its_input(capsys, workdir, how):
    ref = workdir / "ref.safetensors"
    shutil.copy(FIXTURES / "reference_md17_l3_small.safetensors", ref)
    before = digest(ref)
    out = {"same name": "ref.safetensors", "symlink": "link.safetensors", "hard link": "hard.safetensors"}[how]
    if how == "symlink":
        (workdir / out).symlink_to(ref)
    if how == "hard link":
        os.link(ref, workdir / out)
    refused(capsys, ["convert-reference", "ref.safetensors", out, "--variant", "md17-l3", "--task-mean", "0",
                     "--task-std", "1"], "convert-reference", out)
    assert digest(ref) == before


@pytest.mark.parametrize("command", ["relax", "md"])
def test_relax_and_md_refuse_to_overwrite_their_input(capsys, workdir, checkpoint, command):
    frames = [molecule("H2O") for _ in range(5)]
    for k, atoms in enumerate(frames):
        atoms.rattle(0.01 * (k + 1), seed=k)
    write(workdir / "in.traj", frames)
    before = digest(workdir / "in.traj")
    refused(capsys, [command, "in.traj", "-o", "in.traj", "--checkpoint", checkpoint, "--steps", "2"], command, "in.traj")
    refused(capsys, [command, "in.traj", "-o", "./sub/../in.traj", "--checkpoint", checkpoint], command, "in.traj")
    assert digest(workdir / "in.traj") == before and len(read(workdir / "in.traj", ":")) == 5
    # a side file (relax: <stem>_final.extxyz, md: <stem>_log.csv) that is the input
    side = "run_final.extxyz" if command == "relax" else "run_log.csv"
    write(workdir / side, frames[0], format="extxyz")
    before = digest(workdir / side)
    refused(capsys, [command, side, "--format", "extxyz", "-o", "run.traj", "--checkpoint", checkpoint], command, side)
    assert digest(workdir / side) == before
    # the checkpoint is an input too (a checkpoint file may have any name)
    shutil.copy(checkpoint, workdir / "model.traj")
    refused(capsys, [command, "in.traj", "-o", "model.traj", "--checkpoint", "model.traj"], command, "model.traj")


def test_predict_refuses_to_overwrite_its_input(capsys, workdir, checkpoint):
    write(workdir / "in.extxyz", [molecule("H2O"), molecule("CH4")])
    before = digest(workdir / "in.extxyz")
    refused(capsys, ["predict", "in.extxyz", "--out", "in.extxyz", "--checkpoint", checkpoint], "predict", "in.extxyz")
    write(workdir / "t_forces.csv", molecule("H2O"), format="extxyz")
    refused(capsys, ["predict", "t_forces.csv", "--out", "t.csv", "--checkpoint", checkpoint], "predict", "t_forces.csv")
    assert digest(workdir / "in.extxyz") == before


def test_screen_refuses_a_database_or_table_that_is_a_slab_input(capsys, workdir, checkpoint):
    write(workdir / "slab.traj", fcc111("Cu", (2, 2, 3), vacuum=6.0))
    before = digest(workdir / "slab.traj")
    refused(capsys, ["screen", "--slab", "slab.traj", "--db", "slab.traj", "--checkpoint", checkpoint], "screen",
            "slab.traj")
    shutil.copy(workdir / "slab.traj", workdir / "screen_sites.csv")
    refused(capsys, ["screen", "--slab", "screen_sites.csv", "--db", "s.db", "--checkpoint", checkpoint], "screen",
            "screen_sites.csv")
    assert digest(workdir / "slab.traj") == before and not (workdir / "s.db").exists()


def test_evaluate_train_lammps_and_adsorbml_refuse_outputs_that_are_inputs(capsys, workdir, checkpoint):
    (workdir / "out").mkdir()
    write(workdir / "out" / "metrics.json", molecule("H2O"), format="extxyz")
    refused(capsys, ["evaluate", checkpoint, "out/metrics.json", "--out", "out"], "evaluate", "metrics.json")
    # fine-tuning from run/best.safetensors into run/ would replace the starting checkpoint
    (workdir / "run").mkdir()
    shutil.copy(checkpoint, workdir / "run" / "best.safetensors")
    (workdir / "cfg.yaml").write_text("train: data.xyz\nval: data.xyz\nout: run\npreset: tiny\n")
    before = digest(workdir / "run" / "best.safetensors")
    refused(capsys, ["train", "cfg.yaml", "--init-from", "run/best.safetensors"], "train", "best.safetensors")
    assert digest(workdir / "run" / "best.safetensors") == before
    (workdir / "in.lammps").write_text("units metal\n")
    refused(capsys, ["lammps", "in.lammps", "--log", "in.lammps", "--checkpoint", checkpoint], "lammps", "in.lammps")
    assert (workdir / "in.lammps").read_text() == "units metal\n"
    (workdir / "data").mkdir()
    shutil.copy(checkpoint, workdir / "data" / "relax_benchmark.json")
    refused(capsys, ["adsorbml", "data/relax_benchmark.json", "data", "--out", "data"], "adsorbml", "relax_benchmark")


def test_datagen_refuses_an_output_that_is_a_file(capsys, workdir):
    (workdir / "notes.txt").write_text("keep me")
    status = main(["datagen", "--out", "notes.txt"])
    err = capsys.readouterr().err
    assert status == 2 and "equiformer-calc datagen: error: --out notes.txt is a file, not a folder" in err
    assert (workdir / "notes.txt").read_text() == "keep me"
