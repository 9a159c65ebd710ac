"""Smoke runs of every script in examples/ with tiny settings (each in a fresh process, in a
temporary folder). They use the shipped checkpoint when it exists, else a tiny random one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from equiformer_calc.checkpoint import DEFAULT_CHECKPOINT, available_checkpoints, save_checkpoint

from .helpers import make_model

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

#: script -> (tiny arguments, files it must write relative to its working folder)
CASES: dict[str, tuple[list[str], list[str]]] = {
    "relax_co_cu111.py": (
        ["--size", "2x2x3", "--steps", "5"],
        ["co_cu111.traj", "co_cu111_final.extxyz", "co_cu111_energies.csv", "co_cu111_energies.png"],
    ),
    "md_pt_o.py": (
        ["--size", "2x2x3", "--nvt-steps", "4", "--nve-steps", "4", "--log-interval", "2"],
        ["md_pt_o/nvt.traj", "md_pt_o/nve_log.csv", "md_pt_o/nve_energy.png"],
    ),
    "screen_adsorbates.py": (
        ["--metals", "Cu,Pt", "--adsorbates", "O,OH", "--steps", "2"],
        ["screen_example/screen.db", "screen_example/screen_summary.csv", "screen_example/screen_heatmap.png"],
    ),
    "pymatgen_structure.py": (
        ["--layers", "3", "--steps", "2"],
        ["pymatgen_example/Pt111_relaxed.cif", "pymatgen_example/screen_summary.csv"],
    ),
    "own_checkpoint.py": (["--preset", "tiny", "--steps", "2"], ["own_checkpoint/my-model.safetensors"]),
    "ipi_pimd_h_pt.py": (["--beads", "2", "--steps", "4"], ["ipi_pimd_h_pt/pimd.out", "ipi_pimd_h_pt/input.xml"]),
    "phonons.py": (["--supercell", "2", "--mesh", "6", "--points", "5"], ["phonons/phonons_cu.png"]),
    "elastic_constants.py": (["--metals", "Cu"], ["elastic/elastic_constants.csv"]),
    "screen_verified.py": (
        ["--metals", "Cu", "--adsorbates", "O", "--steps", "3", "--reference-steps", "3", "--top-k", "1"],
        ["screen_verified/screen.db", "screen_verified/screen_summary.csv", "screen_verified/screen_heatmap.png"],
    ),
    "vibrations_co_cu111.py": (["--size", "2x2x3", "--steps", "5"], ["co_cu111_vibrations.csv"]),
    "neb_o_cu111.py": (["--size", "2x2x3", "--images", "3", "--steps", "5"],
                       ["neb_o_cu111/neb_profile.csv", "neb_o_cu111/neb_profile.png", "neb_o_cu111/neb_result.json"]),
    "volcano.py": (["--metals", "Cu,Pt", "--adsorbates", "O,OH,H", "--size", "2x2x3", "--steps", "3"],
                   ["volcano/che_volcano.png", "volcano/che_summary.csv", "volcano/che_diagram_Pt-111.png"]),
}

#: script -> the module of the optional extra it needs (the test skips only when that is missing)
REQUIRES: dict[str, str] = {"ipi_pimd_h_pt.py": "ipi", "phonons.py": "phonopy"}


@pytest.fixture(scope="module")
def checkpoint_args(tmp_path_factory) -> list[str]:
    if DEFAULT_CHECKPOINT in available_checkpoints():
        return []  # the examples' default: the shipped checkpoint
    path = save_checkpoint(make_model(1), tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")
    return ["--checkpoint", str(path)]


def test_examples_exist():
    missing = set(CASES) - {p.name for p in EXAMPLES.glob("*.py")}
    assert not missing, missing


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(CASES))
def test_example_runs(script, checkpoint_args, tmp_path):
    args, outputs = CASES[script]
    if script in REQUIRES:
        pytest.importorskip(REQUIRES[script], reason=f"{script} needs an optional extra that is not installed")
    if script != "own_checkpoint.py":  # that one makes its own checkpoint
        args = args + checkpoint_args
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in outputs:
        assert (tmp_path / name).stat().st_size > 0, name
