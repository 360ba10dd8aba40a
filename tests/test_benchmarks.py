"""The benchmark scripts still run (tiny settings; their figures are not checked here)."""

from __future__ import annotations

import json
import shutil
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


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("flite") is None,
    reason="needs espeak-ng and flite: run `bash scripts/setup.sh`",
)
def test_speech_eval_runs(tmp_path):
    data = tmp_path / "speech"
    build = [sys.executable, "-m", "edge_clapp.cli", "data", "speech", "--out", str(data)]
    build += ["--max-speakers", "4", "--words", "4", "--repeats", "2", "--quiet"]
    assert subprocess.run(build, cwd=ROOT, timeout=300).returncode == 0
    argv = [sys.executable, "benchmarks/speech_eval.py", "--data", str(data), "--quiet"]
    argv += ["--preset", "tiny", "--max-train-seconds", "20", "--tasks", "word", "speaker"]
    argv += ["--methods", "random", "clapp", "clapp-s-batch", "--out", str(tmp_path / "eval")]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert list(report["methods"]) == ["random", "clapp", "clapp-s-batch"]
    for method in report["methods"].values():
        assert len(method["probe"]["word"]) == 5
    assert (tmp_path / "eval" / "probes.png").stat().st_size > 0
    assert (tmp_path / "eval" / "clapp" / "checkpoint").is_dir()

    # A second run with another method, then --merge of the two.
    other = argv[: argv.index("--methods")] + ["--methods", "gim", "--out", str(tmp_path / "b")]
    result = subprocess.run(other, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    merge = [sys.executable, "benchmarks/speech_eval.py", "--out", str(tmp_path / "m")]
    merge += ["--merge", str(tmp_path / "eval"), str(tmp_path / "b")]
    result = subprocess.run(merge, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    merged = json.loads((tmp_path / "m" / "eval.json").read_text())
    assert list(merged["methods"]) == ["random", "clapp", "clapp-s-batch", "gim"]
    assert "gim" in result.stdout and "word:" in result.stdout


def test_vision_eval_runs(tmp_path):
    """Both image sets, all three methods, 300 images each, one pass."""
    argv = [sys.executable, "benchmarks/vision_eval.py", "--limit", "300", "--passes", "1"]
    argv += ["--quiet", "--out", str(tmp_path)]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "eval.json").read_text())
    assert set(report["sets"]) == {"digits", "mnist"}
    for data in report["sets"].values():
        assert data["train"] + data["test"] == 300
        assert list(data["methods"]) == ["random", "clapp", "hinge-cpc"]
        for method in data["methods"].values():
            assert [r["layer"] for r in method["layers"]] == [1, 2, 3]
            assert all(0.0 <= r["accuracy"] <= 1.0 for r in method["layers"])
    assert report["config"]["preset"] == "vision"
    assert "mnist: linear probe accuracy" in result.stdout
    assert (tmp_path / "vision_probes.png").stat().st_size > 0
