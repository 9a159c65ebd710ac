"""The house's layering is declared in pyproject.toml ([tool.importlinter]) and checked here with
import-linter: a lower floor never imports a higher one (graph/nn -> model -> predictor ->
calculators -> surfaces/data -> workflows/train -> service -> cli) and no package has an import
cycle between its modules; surfaces and data never import torch, nn never imports ASE."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="import-linter comes with the [test] extra, which .ci/run installs")

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the configuration of ``root``/pyproject.toml, on the package in ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code, "--no-cache"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_package_keeps_its_import_contracts():
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 kept, 0 broken" in proc.stdout


def _with_extra_import(tmp_path: Path, module: str, line: str) -> subprocess.CompletedProcess:
    """lint-imports on a copy of the package where ``module`` (a path under equiformer_calc/) gains
    a function-level ``line``."""
    shutil.copytree(ROOT / "equiformer_calc", tmp_path / "equiformer_calc", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "equiformer_calc" / module
    path.write_text(path.read_text() + f"\n\ndef _reach():\n    {line}  # noqa: F401\n")
    return lint_imports(tmp_path)


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The check bites: the model importing the command line (a lower floor reaching up) fails it."""
    proc = _with_extra_import(tmp_path, "model.py", "from .cli import main")
    assert proc.returncode != 0
    assert "equiformer_calc.model -> equiformer_calc.cli" in proc.stdout, proc.stdout


@pytest.mark.parametrize("module, line, edge", [
    ("surfaces/sites.py", "import torch", "equiformer_calc.surfaces.sites -> torch"),
    ("data/plan.py", "import torch", "equiformer_calc.data.plan -> torch"),
    ("nn/norm.py", "from ase import Atoms", "equiformer_calc.nn.norm -> ase"),
])
def test_a_forbidden_import_breaks_its_contract(tmp_path, module, line, edge):
    """torch in surfaces or data, or ASE in nn, fails the forbidden contracts."""
    proc = _with_extra_import(tmp_path, module, line)
    assert proc.returncode != 0
    assert edge in proc.stdout, proc.stdout
