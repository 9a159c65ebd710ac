"""Command-line errors: one line with the cause and a hint, exit status 2, ``-v`` for the traceback,
and nothing written before the inputs are validated.

Issue 11, failures 5, 7 and 8: tracebacks for user errors (``relax --index 7`` on a one-frame file
gave StopIteration, ``screen --metals Xx`` a KeyError, ``--size 2by2`` an int() error, a YAML list
"unknown training config keys [' ', 'a', ...]"); ``relax``/``md`` on an unsupported element left an
empty .traj; ``screen --slab`` with an unsupported element relaxed the gas references first;
``--help`` imported torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.io import write

from equiformer_calc.cli import main

from ..helpers import make_model


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    err = capsys.readouterr().err
    return status, err


def assert_one_line_error(status: int, err: str, command: str, needle: str) -> None:
    assert status == 2, err
    lines = [line for line in err.splitlines() if f"equiformer-calc {command}: error:" in line]
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]
    assert "(hint: " in lines[0]
    assert "Traceback" not in err


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def water_file(folder: Path) -> Path:
    path = folder / "water.xyz"
    write(path, molecule("H2O"))
    return path


def iron_file(folder: Path) -> Path:
    path = folder / "iron.xyz"
    write(path, bulk("Fe", "bcc", a=2.87, cubic=True))
    return path


# ------------------------------------------------------------------------------------ relax / md
@pytest.mark.parametrize("command", ["relax", "md"])
def test_index_out_of_range_and_not_a_number(capsys, workdir, checkpoint, command):
    water = water_file(workdir)
    status, err = run_cli(capsys, command, str(water), "--index", "7", "--checkpoint", checkpoint)
    assert_one_line_error(status, err, command, "--index 7 is out of range")
    assert "has 1 frame(s)" in err
    status, err = run_cli(capsys, command, str(water), "--index", "last", "--checkpoint", checkpoint)
    assert_one_line_error(status, err, command, "--index must be a frame number")
    assert files(workdir) == {"water.xyz"}


@pytest.mark.parametrize("command", ["relax", "md"])
def test_unsupported_element_leaves_no_files(capsys, workdir, checkpoint, command):
    iron = iron_file(workdir)
    status, err = run_cli(capsys, command, str(iron), "--checkpoint", checkpoint, "-o", "out/run.traj")
    assert_one_line_error(status, err, command, "element(s) Fe not supported by this model")
    assert files(workdir) == {"iron.xyz"}  # no .traj, no out/ folder, no CSV


@pytest.mark.parametrize("command", ["relax", "md"])
def test_common_wrong_inputs(capsys, workdir, checkpoint, command):
    status, err = run_cli(capsys, command, "missing.xyz", "--checkpoint", checkpoint)
    assert_one_line_error(status, err, command, "input file 'missing.xyz' does not exist")
    (workdir / "junk.xyz").write_text("this is not\na structure\n")
    status, err = run_cli(capsys, command, "junk.xyz", "--checkpoint", checkpoint)
    assert_one_line_error(status, err, command, "could not read junk.xyz")
    water = water_file(workdir)
    status, err = run_cli(capsys, command, str(water), "--checkpoint", "no-such-model")
    assert_one_line_error(status, err, command, "unknown checkpoint 'no-such-model'")
    close = workdir / "close.xyz"
    write(close, Atoms("CuCu", positions=[[0, 0, 0], [0.3, 0, 0]]))
    status, err = run_cli(capsys, command, str(close), "--checkpoint", checkpoint)
    assert_one_line_error(status, err, command, "overlap")
    assert files(workdir) == {"junk.xyz", "water.xyz", "close.xyz"}


def test_verbose_shows_the_traceback(capsys, workdir, checkpoint):
    iron = iron_file(workdir)
    status, err = run_cli(capsys, "-v", "relax", str(iron), "--checkpoint", checkpoint)
    assert status == 2 and "Traceback" in err and "UnknownElementError" in err
    assert "equiformer-calc relax: error: element(s) Fe" in err


def test_relax_still_works_and_writes_its_outputs(capsys, workdir, checkpoint):
    water = water_file(workdir)
    status = main(["relax", str(water), "--checkpoint", checkpoint, "--steps", "3", "--dtype", "float64"])
    assert status == 0
    assert {"water_relaxed.traj", "water_relaxed_final.extxyz"} <= files(workdir)


@pytest.mark.parametrize("command", ["relax", "md"])
def test_memory_option_reaches_the_model_and_over_memory_is_one_line(capsys, workdir, checkpoint, command, monkeypatch):
    """``--memory`` reaches the predictor. With the available memory reading between what a copper
    cell needs in 'low' and in 'fast' mode, ``--memory fast`` stops with one line naming the estimate
    and nothing written; the default 'auto' runs the same input in 'low' mode."""
    import equiformer_calc.predictor as predictor_mod
    import equiformer_calc.runtime as runtime_mod
    from equiformer_calc.predictor import MEMORY_HEADROOM, Predictor

    cu = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)  # 32 atoms
    write(workdir / "cu.xyz", cu)
    probe = Predictor(make_model(0))
    edges = probe.graph(probe.to_structure(cu)).num_edges
    low, fast = (probe.estimate_bytes(edges, ("energy", "forces"), m) for m in ("low", "fast"))
    monkeypatch.setattr(runtime_mod, "available_memory", lambda device="cpu": int((low + fast) / 2 / MEMORY_HEADROOM))
    modes: list[str] = []
    original = predictor_mod.compute
    monkeypatch.setattr(predictor_mod, "compute", lambda *a, memory, **k: modes.append(memory) or original(*a, memory=memory, **k))
    status, err = run_cli(capsys, command, "cu.xyz", "--checkpoint", checkpoint, "--memory", "fast")
    assert_one_line_error(status, err, command, "in memory='fast' mode would need about")
    assert "--memory low" in err and modes == []
    assert files(workdir) == {"cu.xyz"}
    assert main([command, "cu.xyz", "--checkpoint", checkpoint, "--steps", "2"]) == 0
    assert modes and set(modes) == {"low"}


# ------------------------------------------------------------------------------------ screen
def test_screen_wrong_inputs(capsys, workdir, checkpoint):
    status, err = run_cli(capsys, "screen", "--metals", "Xx", "--checkpoint", checkpoint)
    assert_one_line_error(status, err, "screen", "unknown metal 'Xx'")
    status, err = run_cli(capsys, "screen", "--metals", "Fe", "--checkpoint", checkpoint)
    assert_one_line_error(status, err, "screen", "Fe is not an fcc metal")
    status, err = run_cli(capsys, "screen", "--checkpoint", checkpoint)
    assert_one_line_error(status, err, "screen", "nothing to screen")
    status, err = run_cli(capsys, "screen", "--metals", "Cu", "--adsorbates", "Zz", "--checkpoint", checkpoint)
    assert status == 2 and "Traceback" not in err and "Zz" in err
    with pytest.raises(SystemExit) as info:  # argparse: usage + one error line, status 2
        main(["screen", "--metals", "Cu", "--size", "2by2"])
    assert info.value.code == 2
    assert "expected NXxNYxLAYERS with positive integers, e.g. 3x3x4, got '2by2'" in capsys.readouterr().err
    assert files(workdir) == set()


def test_screen_slab_with_unsupported_element_fails_before_any_relaxation(capsys, workdir, checkpoint):
    slab = fcc111("Cu", (2, 2, 3), vacuum=6.0)
    slab.numbers[-1] = 26  # one Fe atom
    write(workdir / "slab.xyz", slab)
    status, err = run_cli(capsys, "screen", "--slab", "slab.xyz", "--checkpoint", checkpoint, "--db", "s.db")
    assert_one_line_error(status, err, "screen", "surface 'slab': element(s) Fe not supported")
    assert files(workdir) == {"slab.xyz"}  # no database: nothing was relaxed or stored


# ------------------------------------------------------------------------------------ train / evaluate / serve
@pytest.mark.parametrize("text, needle", [
    ("- a\n- b\n", "must be a YAML mapping of TrainConfig fields"),
    (" a", "must be a YAML mapping of TrainConfig fields"),
    ("train: [unclosed\n", "is not valid YAML"),
    ("trian: data.xyz\n", "unknown training config keys ['trian']"),
])
def test_train_config_errors(capsys, workdir, text, needle):
    (workdir / "cfg.yaml").write_text(text)
    status, err = run_cli(capsys, "train", "cfg.yaml")
    assert_one_line_error(status, err, "train", needle)


def test_train_missing_files_and_foreign_elements_write_nothing(capsys, workdir):
    status, err = run_cli(capsys, "train", "nope.yaml")
    assert_one_line_error(status, err, "train", "nope.yaml")
    (workdir / "cfg.yaml").write_text("train: missing.xyz\nval: missing.xyz\nout: run\n")
    status, err = run_cli(capsys, "train", "cfg.yaml")
    assert_one_line_error(status, err, "train", "dataset missing.xyz does not exist")
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for a in (bulk("Fe", "bcc", a=2.87), bulk("Cu", "fcc", a=3.6)):
        a.calc = SinglePointCalculator(a, energy=-1.0, forces=[[0.0, 0.0, 0.0]] * len(a))
        frames.append(a)
    write(workdir / "data.xyz", frames)
    (workdir / "cfg.yaml").write_text("train: data.xyz\nval: data.xyz\nout: run\nelements: [Cu]\npreset: tiny\n")
    status, err = run_cli(capsys, "train", "cfg.yaml")
    assert_one_line_error(status, err, "train", "the data contain Fe, which the config's elements (Cu) do not include")
    assert not (workdir / "run").exists()


def test_evaluate_and_serve_wrong_inputs(capsys, workdir, checkpoint):
    status, err = run_cli(capsys, "evaluate", "missing.safetensors", "data.xyz")
    assert_one_line_error(status, err, "evaluate", "checkpoint file 'missing.safetensors' does not exist")
    status, err = run_cli(capsys, "evaluate", checkpoint, "data.xyz")
    assert_one_line_error(status, err, "evaluate", "data.xyz")
    assert main(["serve", "--checkpoint", "missing.safetensors", "--port", "0"]) == 2


def test_adsorbml_wrong_inputs(capsys, workdir, checkpoint):
    status, err = run_cli(capsys, "adsorbml", checkpoint, "nowhere")
    assert_one_line_error(status, err, "adsorbml", "nowhere is not a folder")
    (workdir / "data").mkdir()
    (workdir / "data" / "relax_tasks.json").write_text("[]")
    status, err = run_cli(capsys, "adsorbml", checkpoint, "data")
    assert_one_line_error(status, err, "adsorbml", "has no relax_initial.extxyz, relax_relaxed.extxyz")


# ------------------------------------------------------------------------------------ --help
def test_help_does_not_import_torch():
    """``equiformer-calc --help`` stays fast: neither the package nor the CLI imports torch."""
    code = (
        "import sys\n"
        "from equiformer_calc.cli import main\n"
        "try:\n"
        "    status = main(['--help'])\n"
        "except SystemExit as exc:\n"
        "    status = exc.code\n"
        "heavy = sorted(m for m in ('torch', 'e3nn', 'ase.optimize', 'fastapi') if m in sys.modules)\n"
        "print('STATUS', status, 'HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "usage: equiformer-calc" in proc.stdout
    assert "STATUS 0 HEAVY []" in proc.stdout, proc.stdout
