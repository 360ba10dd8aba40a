"""`edge-clapp learn` on video: vtest.avi end to end, resume, the camera path without a
camera, and sources that do not fit the config."""

from __future__ import annotations

import json

import pytest
import torch

from edge_clapp.checkpoint import load_checkpoint
from edge_clapp.cli import main
from edge_clapp.image_data import OPENCV_DATA

VTEST = OPENCV_DATA / "vtest.avi"
pytestmark = pytest.mark.skipif(not VTEST.is_file(), reason="opencv-doc is not installed")


def _learn(out, *options: str, source: str = f"video:{VTEST}") -> int:
    """`edge-clapp learn --source SOURCE --out OUT --quiet OPTIONS...`: its exit code."""
    return main(["learn", "--source", source, "--out", str(out), "--quiet", *options])


def test_learn_from_vtest_writes_frames_metrics_and_a_vision_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    code = _learn(out, "--max-frames", "60")
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["preset"] == "vision"  # the default for a video source
    assert metrics["frames"] == 60 == metrics["counters"]["blocks_learned"]
    assert metrics["source"]["fps"] == pytest.approx(10.0, abs=0.01)
    assert metrics["forward_macs_per_frame"] > 0
    printed = capsys.readouterr().out
    assert "learned from 60 frames" in printed and "at 10.00 fps" in printed
    learner, extra = load_checkpoint(out / "checkpoint")
    assert learner.config.is_vision and extra["samples_consumed"] == 60


def test_resume_continues_the_video_bit_identically(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    video = f"video:{VTEST}"
    assert _learn(straight, "--max-frames", "50", source=video) == 0
    # Started with the bare path, resumed with the prefixed one: the same source.
    assert _learn(split, "--max-frames", "20", source=str(VTEST)) == 0
    resume = ["learn", "--resume", str(split), "--source", video, "--max-frames", "30"]
    assert main([*resume, "--quiet"]) == 0
    a, _ = load_checkpoint(straight / "checkpoint")
    b, extra = load_checkpoint(split / "checkpoint")
    assert extra["samples_consumed"] == 50
    for name, tensor in a.tensors().items():
        assert torch.equal(tensor, b.tensors()[name]), name
    assert a.counters == b.counters


def test_max_seconds_counts_video_at_the_source_rate(tmp_path):
    out = tmp_path / "run"
    assert _learn(out, "--max-seconds", "2.5") == 0
    assert json.loads((out / "metrics.json").read_text())["frames"] == 25  # 10 fps


def test_camera_without_a_camera_is_a_clear_error(tmp_path, capfd):
    code = _learn(tmp_path / "run", source="camera")
    err = capfd.readouterr().err
    assert code == 2
    assert "no camera" in err and "video:PATH" in err
    assert "WARN" not in err  # OpenCV's own device warnings do not reach the user
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_a_source_that_does_not_fit_the_config_is_refused(tmp_path, capsys):
    code = _learn(tmp_path / "r", "--preset", "raw")
    assert code == 2
    assert "learns from audio: use --preset vision" in capsys.readouterr().err
    assert not (tmp_path / "r" / "checkpoint").exists()


def test_bad_frame_limits_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["learn", "--source", f"video:{VTEST}", "--out", str(tmp_path / "r"),
              "--max-frames", "0"])  # fmt: skip
    assert "must be > 0" in capsys.readouterr().err
    code = _learn(tmp_path / "r", "--max-frames", "3", "--max-seconds", "1")
    assert code == 2
    assert "not both" in capsys.readouterr().err


def test_an_audio_source_with_the_vision_preset_is_refused(tmp_path, capsys):
    wav = tmp_path / "a.wav"
    import numpy as np
    import soundfile as sf

    sf.write(wav, np.zeros(16000, np.float32), 16000)
    code = _learn(tmp_path / "r", "--preset", "vision", source=str(wav))
    assert code == 2
    assert "is an audio source" in capsys.readouterr().err


def test_more_refusals_before_any_work(tmp_path, capsys):
    run = tmp_path / "run"
    assert _learn(run, "--max-frames", "3") == 0
    capsys.readouterr()
    # A new run inside a checkpoint folder would shadow the run it belongs to.
    inside = run / "checkpoint"
    code = _learn(inside)
    assert code == 2 and "is a run's checkpoint folder" in capsys.readouterr().err
    # Absurd durations are refused by the parser.
    with pytest.raises(SystemExit):
        main(["learn", "--source", f"video:{VTEST}", "--out", str(tmp_path / "x"),
              "--max-seconds", "1e308"])  # fmt: skip
    assert "at most 1e+09 seconds" in capsys.readouterr().err
    # A folder of videos is not a video: each must be named.
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.avi").write_bytes(VTEST.read_bytes()[:200_000])
    code = _learn(tmp_path / "y", "--preset", "vision", source=str(videos))
    assert code == 2 and "pass each video with video:PATH" in capsys.readouterr().err


def test_a_checkpoint_with_a_negative_replay_count_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from edge_clapp.errors import CheckpointError
    from edge_clapp.paths import file_sha256

    run = tmp_path / "run"
    assert _learn(run, "--max-frames", "3") == 0
    folder = run / "checkpoint"
    meta = json.loads((folder / "meta.json").read_text())
    state = folder / meta["state_file"]
    tensors = load_file(str(state))
    tensors["replay.offered"] = torch.tensor(-5)
    save_file(tensors, str(state))
    meta["sha256"] = file_sha256(state)  # a careful edit: the checksum matches
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="replay.offered holds -5"):
        load_checkpoint(folder)


def test_resume_of_a_run_that_recorded_a_bare_path_continues(tmp_path, capsys):
    """A run whose checkpoint records the video as a bare path (as runs did before the
    `video:` spelling was recorded) resumes where it stopped, without --source; and a
    resume into its own checkpoint folder is refused."""
    run = tmp_path / "run"
    assert _learn(run, "--max-frames", "8") == 0
    meta_path = run / "checkpoint" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["extra"]["source_spec"] = str(VTEST)
    meta_path.write_text(json.dumps(meta))
    assert main(["learn", "--resume", str(run), "--max-frames", "4", "--quiet"]) == 0
    assert "learning from the start" not in capsys.readouterr().err
    _, extra = load_checkpoint(run / "checkpoint")
    assert extra["samples_consumed"] == 12
    code = main(["learn", "--resume", str(run), "--out", str(run / "checkpoint"), "--quiet"])
    assert code == 2 and "is a run's checkpoint folder" in capsys.readouterr().err


def test_probe_a_vision_run_on_mnist(tmp_path, capsys):
    out = tmp_path / "run"
    assert _learn(out, "--max-frames", "20") == 0
    capsys.readouterr()
    report = tmp_path / "probe.json"
    assert main(["probe", str(out), "--task", "mnist", "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "4,000 train / 1,000 held-out images" in printed
    layers = json.loads(report.read_text())["layers"]
    assert [r["layer"] for r in layers] == [1, 2, 3]
    assert all(r["accuracy"] > 2 * r["chance"] for r in layers)  # digits are learnable
    assert main(["probe", str(out), "--task", "word"]) == 2
    assert "does not fit this vision run" in capsys.readouterr().err
