"""The package installs anywhere: a wheel built from this tree, installed into a fresh virtual environment
outside the repository, finds and loads the default shipped checkpoint."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_outside_the_repository_loads_the_default_checkpoint(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(wheels)],
                   check=True, cwd=tmp_path, timeout=600)
    (wheel,) = wheels.glob("equiformer_calc-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    # the dependencies (torch, e3nn, ase, ...) come from this environment's site-packages as a plain path
    # entry: its .pth files (among them the editable install of this repository) are not executed
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    (purelib / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True, timeout=300)
    code = (
        "import equiformer_calc, ase.build\n"
        "from equiformer_calc import EquiformerCalculator\n"
        "from equiformer_calc.checkpoint import DEFAULT_CHECKPOINT, resolve_checkpoint\n"
        "atoms = ase.build.molecule('H2O')\n"
        "atoms.calc = EquiformerCalculator()\n"
        "print(equiformer_calc.__file__)\n"
        "print(resolve_checkpoint(DEFAULT_CHECKPOINT))\n"
        "print(atoms.get_potential_energy())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EQUIFORMER_CALC_CHECKPOINTS")}
    out = subprocess.run([str(python), "-c", code], cwd=tmp_path, env=env, check=True, capture_output=True,
                         text=True, timeout=300).stdout.splitlines()
    assert out[0].startswith(str(venv)), out  # the installed copy, not this repository
    assert out[1].startswith(str(venv)) and out[1].endswith(".safetensors"), out  # its packaged checkpoint
    assert float(out[-1]) == float(out[-1])  # a finite number came back
    assert REPO.as_posix() not in out[0]
