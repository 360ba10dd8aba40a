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
        [
            "benchmarks/cost.py",
            *("--preset", "tiny", "--blocks", "8", "--repeats", "1", "--no-scaling"),
            *("--out", "{tmp}"),
        ],
    ],
)
def test_benchmark_runs(argv, tmp_path):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    result = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch" in result.stdout or "explicit" in result.stdout
    if "cost.py" in argv[0]:
        assert "fraction" in result.stdout and (tmp_path / "cost.json").is_file()
