"""benchmarks/gpu.py: a clear refusal without CUDA, and the same code paths run on the CPU.

The GPU numbers themselves are measured wherever a CUDA device is available (RESULTS.md "GPU");
here the script's device-agnostic code (latency in the memory mode the Predictor picks, batched
prediction, MD) runs with ``--device cpu --quick``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"


def _run(*args: str, env_extra: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_gpu_benchmark_refuses_clearly_without_cuda():
    proc = _run("--device", "cuda", env_extra={"CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "needs a CUDA GPU" in proc.stderr and "--device cpu" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_gpu_benchmark_code_paths_run_on_cpu(tmp_path):
    out = tmp_path / "gpu.md"
    proc = _run("--device", "cpu", "--quick", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("## GPU")
    assert "| Cu fcc bulk, 500 atoms, pbc TTT | 500 | 21000 | fast |" in text
    assert "Batched prediction of 8 small structures" in text and "MD (NVE" in text
