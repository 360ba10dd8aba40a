"""The benchmark scripts still run (tiny settings; their figures are not checked here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "argv",
    [
        ["benchmarks/stream_speed.py", "--preset", "tiny", "--seconds", "4"],
        ["benchmarks/onnx_latency.py", "--preset", "mcu", "--repeats", "3"],
    ],
)
def test_benchmark_runs(argv):
    result = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch" in result.stdout or "explicit" in result.stdout
