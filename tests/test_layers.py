"""The house's layering is declared in pyproject.toml ([tool.importlinter]) and checked here with
import-linter: a lower floor never imports a higher one (graph/nn -> model -> predictor ->
calculators -> surfaces/data -> workflows/train -> service -> cli) and no package has an import
cycle between its modules."""

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
    assert "2 kept, 0 broken" in proc.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The check bites: the model importing the command line (a lower floor reaching up) fails it."""
    shutil.copytree(ROOT / "equiformer_calc", tmp_path / "equiformer_calc", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    model = tmp_path / "equiformer_calc" / "model.py"
    model.write_text(model.read_text() + "\n\ndef _reach_up():\n    from .cli import main  # noqa: F401\n")
    proc = lint_imports(tmp_path)
    assert proc.returncode != 0
    assert "equiformer_calc.model -> equiformer_calc.cli" in proc.stdout, proc.stdout
