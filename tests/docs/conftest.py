"""The docs site built once per test session (``sphinx-build -W --keep-going -n``, as CI and
``docs/serve.py`` build it) into a temporary folder, for the tests of tests/docs."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


@dataclass
class BuiltSite:
    html: Path  #: the built HTML folder
    status: int  #: sphinx-build's exit status
    log: str  #: its stdout + stderr
    seconds: float


@pytest.fixture(scope="session")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> BuiltSite:
    pytest.importorskip("sphinx", reason="the [docs] extra (part of [test]) is not installed")
    import time

    out = tmp_path_factory.mktemp("docs")
    # the tutorials run on this checkout's code every time, even where an earlier build left their outputs
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "EQUIFORMER_CALC_DOCS_RERUN_TUTORIALS": "1"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html", str(DOCS),
         str(out / "html"), "-d", str(out / "doctrees")],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    return BuiltSite(out / "html", proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start)


@pytest.fixture(scope="session")
def site(built_site: BuiltSite) -> Path:
    """The built HTML folder; fails (once per test) when the build failed."""
    warnings = [line for line in built_site.log.splitlines() if "WARNING" in line or "ERROR" in line]
    assert built_site.status == 0, "sphinx-build -W -n failed:\n" + "\n".join(warnings or built_site.log.splitlines()[-40:])
    return built_site.html
