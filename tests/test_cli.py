"""The `edge-clapp` command as a user runs it: learn, resume, devices, demo, and refusals.

Expected failures are run as real processes, so that what a user would see is what is
checked: exit status 2, one `edge-clapp: error:` line that names the problem, no traceback.
Successful runs call `main()` in this process (the same code path, without the start-up
cost of a new interpreter per test).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from edge_clapp.checkpoint import load_checkpoint
from edge_clapp.cli import main
from edge_clapp.config import resolve_config
from edge_clapp.learner import OnlineLearner
from edge_clapp.sources import open_source
from tests.helpers import assert_close

KLETTRES = Path("/usr/share/klettres")


def run_cli(*args: str, env: dict | None = None, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "edge_clapp.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def assert_refused(result, *fragments: str) -> None:
    """Exit 2, one error line holding every fragment, and no traceback anywhere."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("edge-clapp:")]
    assert errors and errors[-1].startswith("edge-clapp: error: "), result.stderr
    for fragment in fragments:
        assert fragment in errors[-1], f"{fragment!r} not in {errors[-1]!r}"


@pytest.fixture(scope="module")
def speech_folder(tmp_path_factory) -> Path:
    """Eight real recordings of two languages in three formats and three sample rates."""
    if not KLETTRES.is_dir():
        pytest.skip("Debian's klettres-data is not installed (scripts/setup.sh installs it)")
    folder = tmp_path_factory.mktemp("speech")
    picked = sorted((KLETTRES / "fr" / "alpha").glob("*.ogg"))[:4]
    picked += sorted((KLETTRES / "de" / "syllab").glob("*.ogg"))[:4]
    for i, path in enumerate(picked):
        if i % 3 == 0:
            shutil.copy(path, folder / f"{i:02d}.ogg")
        else:
            data, rate = sf.read(path, always_2d=True)
            if i % 3 == 1:
                sf.write(folder / f"{i:02d}.flac", data, rate, subtype="PCM_24")
            else:  # 8 kHz stereo int16 WAV: a resampled, mixed-down path
                stereo = np.repeat(data.mean(axis=1, keepdims=True), 2, axis=1)
                down = stereo[:: max(rate // 8000, 1)]
                sf.write(folder / f"{i:02d}.wav", down, rate // max(rate // 8000, 1))
    (folder / "README.txt").write_text("not audio; ignored\n")
    return folder


def read_metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def test_learn_from_a_folder_writes_metrics_config_and_checkpoint(speech_folder, tmp_path):
    out = tmp_path / "run"
    code = main(
        ["learn", "--source", str(speech_folder), "--out", str(out), "--seed", "4", "--quiet"]
    )
    assert code == 0
    metrics = read_metrics(out)
    counters = metrics["counters"]
    total = sum(sf.info(p).duration for p in speech_folder.iterdir() if p.suffix != ".txt")
    # 1 s blocks; the tail that does not fill a block is dropped.
    assert counters["blocks"] == int(metrics["audio_seconds"]) == counters["blocks_learned"]
    assert total - 1 < metrics["audio_seconds"] <= total
    assert metrics["source"]["files_read"] == 8 and metrics["source"]["files_ignored"] == 1
    assert metrics["source"]["files_skipped"] == []
    assert counters["boundaries"] >= 8  # each file starts a segment
    assert metrics["speed_x_realtime"] > 0 and metrics["preset"] == "raw"
    assert len(metrics["layers"]) == 5
    for layer in metrics["layers"]:
        assert np.isfinite([layer["loss"], layer["pos_score"], layer["neg_score"]]).all()

    # config.toml reproduces the run's config; the checkpoint holds the learned state.
    config = resolve_config("raw", out / "config.toml")
    assert config == resolve_config("raw", overrides={"seed": 4})
    learner, extra = load_checkpoint(out / "checkpoint")
    assert learner.config == config
    assert extra["source_spec"] == str(speech_folder)
    assert extra["samples_consumed"] == counters["blocks"] * config.block_samples
    assert metrics["state_bytes"] == learner.state_bytes == OnlineLearner(config).state_bytes
    fresh = OnlineLearner(config)
    weight = "layers.0.weight"
    assert not torch.equal(learner.tensors()[weight], fresh.tensors()[weight])


def test_resume_continues_the_same_run_bit_identically(speech_folder, tmp_path):
    common = ["--source", str(speech_folder), "--seed", "5", "--quiet"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["learn", *common, "--out", str(straight), "--max-seconds", "11"]) == 0
    assert main(["learn", *common, "--out", str(split), "--max-seconds", "4"]) == 0
    # The first part ends inside a recording: the resumed stream must not restart it.
    assert load_checkpoint(split / "checkpoint")[1]["samples_consumed"] == 4 * 16000
    with open_source(str(speech_folder), sample_rate=16000, block_samples=16000) as source:
        fifth = list(itertools.islice(source.blocks(), 5))[-1]
    assert 0 not in fifth.starts
    assert main(["learn", "--resume", str(split), "--max-seconds", "7", "--quiet"]) == 0

    expected, _ = load_checkpoint(straight / "checkpoint")
    resumed, extra = load_checkpoint(split / "checkpoint")
    for name, tensor in expected.tensors().items():
        assert_close(resumed.tensors()[name], tensor, name=name)
    assert resumed.counters == expected.counters
    assert extra["samples_consumed"] == 11 * 16000
    assert read_metrics(split)["audio_seconds"] == 7


def test_resume_refuses_a_changed_config_and_an_exhausted_source(speech_folder, tmp_path):
    out = tmp_path / "run"
    assert main(["learn", "--source", str(speech_folder), "--out", str(out), "--quiet"]) == 0
    assert_refused(
        run_cli("learn", "--resume", str(out), "--lr", "0.5"),
        "--lr cannot change a resumed run",
    )
    assert_refused(
        run_cli("learn", "--resume", str(out), "--quiet"),
        "has already learned from the first",
        "pass --source",
    )
    assert_refused(
        run_cli("learn", "--source", str(speech_folder), "--out", str(out)),
        "already holds a run",
        f"--resume {out}",
    )


def test_bad_sources_are_refused_clearly(tmp_path):
    (tmp_path / "notes.wav").write_text("meeting notes, not audio\n" * 50)
    (tmp_path / "song.mp3").write_bytes(b"ID3" + bytes(500))
    (tmp_path / "empty").mkdir()
    out = str(tmp_path / "out")
    cases = {
        str(tmp_path / "missing.wav"): "does not exist",
        str(tmp_path / "notes.wav"): "not audio that soundfile can decode",
        str(tmp_path / "song.mp3"): "extension '.mp3' is not supported",
        str(tmp_path / "empty"): "holds no readable audio",
    }
    for spec, message in cases.items():
        assert_refused(run_cli("learn", "--source", spec, "--out", out), message)
    assert not (tmp_path / "out" / "checkpoint").exists()


def test_bad_configs_and_options_are_refused_clearly(speech_folder, tmp_path):
    src = ["learn", "--source", str(speech_folder), "--out", str(tmp_path / "out")]
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[rule\nlr = 0.1\n")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[rule]\nlearning_rate = 0.1\n")
    negative = tmp_path / "negative.toml"
    negative.write_text("[rule]\nlr = -1.0\n")
    assert_refused(run_cli(*src, "--config", str(bad_toml)), "is not valid TOML")
    assert_refused(
        run_cli(*src, "--config", str(unknown)),
        "unknown config keys ['learning_rate'] in [rule]",
        "'lr'",
    )
    assert_refused(run_cli(*src, "--config", str(negative)), "rule.lr = -1.0 must be >= 0")
    assert_refused(run_cli(*src, "--config", str(tmp_path / "nope.toml")), "does not exist")
    assert_refused(run_cli(*src, "--offsets", "0"), "offsets = 0")
    assert_refused(run_cli("learn", "--out", str(tmp_path / "x")), "learn needs --source")
    # argparse's own refusals (unknown preset) also exit 2 without a traceback.
    wrong = run_cli(*src, "--preset", "huge")
    assert wrong.returncode == 2 and "invalid choice: 'huge'" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_damaged_checkpoint_is_refused_and_nothing_is_written(speech_folder, tmp_path):
    out = tmp_path / "run"
    assert main(["learn", "--source", str(speech_folder), "--out", str(out), "--quiet",
                 "--max-seconds", "3"])  == 0  # fmt: skip
    meta = out / "checkpoint" / "meta.json"
    meta.write_text(meta.read_text()[:40])
    before = sorted(p.name for p in (out / "checkpoint").iterdir())
    assert_refused(
        run_cli("learn", "--resume", str(out)), "meta.json", "Resume from an intact copy"
    )
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == before
    assert_refused(
        run_cli("learn", "--resume", str(tmp_path / "nothing-here")),
        "does not exist: pass the --out folder",
    )


def no_audio_server_env(tmp_path: Path) -> dict:
    """No sound card here; PULSE_SERVER aimed at nothing, private HOME: no input at all."""
    return {
        "PULSE_SERVER": f"unix:{tmp_path}/no-such-socket",
        "HOME": str(tmp_path),
        "XDG_RUNTIME_DIR": str(tmp_path),
        "PULSE_RUNTIME_PATH": str(tmp_path),
    }


def test_mic_without_an_audio_server_is_a_clear_error(tmp_path):
    env = no_audio_server_env(tmp_path)
    result = run_cli("learn", "--source", "mic", "--out", str(tmp_path / "o"), env=env)
    assert_refused(result, "no audio input device found", "edge-clapp devices")
    listing = run_cli("devices", env=env)
    assert listing.returncode == 1 and "no audio input devices" in listing.stdout
    assert "Traceback" not in listing.stderr


def test_devices_lists_the_virtual_microphone(virtual_mic, capsys):
    assert main(["devices"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.endswith("pulse") for line in lines), lines
    assert sum(line.endswith("(default)") for line in lines) == 1, lines


def test_learn_from_the_virtual_microphone(virtual_mic, tmp_path):
    """Real speech played into the virtual microphone is learned from, live."""
    recordings = sorted((KLETTRES / "it" / "syllab").glob("*.ogg"))
    if not recordings:
        pytest.skip("Debian's klettres-data is not installed (scripts/setup.sh installs it)")
    import soxr

    parts = []
    for path in recordings:  # about 8 s of Italian syllables
        data, rate = sf.read(path, dtype="float32", always_2d=True)
        parts.append(soxr.resample(data.mean(axis=1), rate, 16000))
        if sum(map(len, parts)) >= 8 * 16000:
            break
    speech = np.concatenate(parts)
    played = tmp_path / "speech.wav"
    sf.write(played, 0.5 * speech / np.abs(speech).max(), 16000, subtype="PCM_16")
    seconds = int(len(speech) / 16000) - 1
    assert seconds >= 6

    out = tmp_path / "mic-run"
    player = virtual_mic.play(played)
    code = main(["learn", "--source", "mic", "--out", str(out), "--seed", "2", "--quiet",
                 "--max-seconds", str(seconds)])  # fmt: skip
    assert code == 0
    player.wait(timeout=30)

    metrics = read_metrics(out)
    counters = metrics["counters"]
    assert counters["blocks"] == seconds == counters["blocks_learned"]
    # Speech arrived: at most the first block (before playback began) can be silent.
    assert counters["silent_blocks"] <= 1, counters
    assert counters["nonfinite_samples"] == 0 and counters["overflows"] == 0
    learner, extra = load_checkpoint(out / "checkpoint")
    assert extra["source_spec"] == "mic"
    fresh = OnlineLearner(learner.config)
    for name, tensor in learner.tensors().items():
        assert torch.isfinite(tensor).all() if tensor.is_floating_point() else True, name
    assert not torch.equal(
        learner.tensors()["layers.4.weight"], fresh.tensors()["layers.4.weight"]
    )
    # The rule saw real positives: the mean positive score moved above the negative one.
    last = metrics["layers"][-1]
    assert last["pos_score"] > last["neg_score"], last


def test_demo_runs_end_to_end_and_reports_both_encoders(tmp_path, capsys):
    """The main job on a short budget: the table, demo.json and the run files."""
    if not KLETTRES.is_dir():
        pytest.skip("Debian's klettres-data is not installed (scripts/setup.sh installs it)")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--max-seconds", "60", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "language probe on 453 held-out recordings (20 languages" in printed
    result = json.loads((out / "demo.json").read_text())
    probe = result["probe"]
    assert result["audio_seconds"] == 60 and result["languages"] == 20
    assert len(probe["init"]) == len(probe["learned"]) == 5
    for row in probe["init"] + probe["learned"]:
        assert probe["chance"] <= row["accuracy"] <= 1, row
    # Even 60 s of learning widens the held-out score gap of every layer.
    for before, after in zip(result["score_gap"]["init"], result["score_gap"]["learned"],
                             strict=True):  # fmt: skip
        assert after["gap"] > before["gap"] + 0.05, (before, after)
    assert (out / "metrics.json").exists() and (out / "checkpoint" / "meta.json").exists()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[stream]\nreplay_min_age_seconds = inf\n", "must be a finite number"),
        ("[rule]\nlr = nan\n", "rule.lr = nan must be a finite number"),
        ("seed = 9223372036854775808\n", "must be an integer in [0, 2**63)"),
        (
            "[stream]\nblock_frames = 2\n[rule]\noffsets = 2\n"
            "[[layers]]\nkind = 'conv1d'\nchannels = 4\nkernel = 400\nstride = 1\n",
            "layers[0].kernel = 400 reaches further back than one block",
        ),
        ("[frontend]\nkind = 7\n", "frontend.kind = 7 is not valid"),
        ("[rule]\nlr = 'fast'\n", "must be a number"),
        ('preset = ["raw"]\n', "preset = ['raw']"),
        ("[rule]\nschedule = 'both'\nnum_negatives = 100000\n", "is more than 16"),
        ("[frontend]\nsample_rate = 10000000000\n", "outside the supported 1000..192000 Hz"),
        ("[rule]\npred_init_std = 1e300\n", "is more than 10"),
        ("[stream]\nreplay_min_age_seconds = 1e300\n", "is more than a day"),
    ],
)
def test_config_values_are_checked_before_any_work(tmp_path, capsys, toml, message):
    config = tmp_path / "c.toml"
    config.write_text(toml)
    code = main(["learn", "--source", "x.wav", "--out", str(tmp_path / "o"),
                 "--config", str(config)])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-clapp: error: ") and message in err, err
    assert not (tmp_path / "o").exists()


def test_unreadable_config_files_are_refused(tmp_path, capsys):
    latin = tmp_path / "latin1.toml"
    latin.write_bytes("# caf\xe9\n[rule]\nlr = 0.1\n".encode("latin-1"))
    for path, message in [(latin, "is not valid TOML"), (tmp_path, "cannot be read")]:
        code = main(["learn", "--source", "x.wav", "--out", str(tmp_path / "o"),
                     "--config", str(path)])  # fmt: skip
        assert code == 2
        err = capsys.readouterr().err
        assert message in err, err


def test_bad_seconds_options_are_refused_by_the_parser(tmp_path):
    for option, value in [("--max-seconds", "0"), ("--max-seconds", "nan"),
                          ("--checkpoint-every", "-1")]:  # fmt: skip
        result = run_cli("learn", "--source", "mic", "--out", str(tmp_path), option, value)
        assert result.returncode == 2 and "finite number of seconds > 0" in result.stderr
        assert "Traceback" not in result.stderr


def test_an_all_nan_recording_is_an_error_and_changes_nothing(tmp_path, capsys):
    path = tmp_path / "nan.wav"
    sf.write(path, np.full(40000, np.nan, np.float32), 16000, subtype="FLOAT")
    out = tmp_path / "run"
    code = main(["learn", "--source", str(path), "--out", str(out), "--quiet", "--seed", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "nothing was learned" in err and "NaN or Inf" in err, err
    learner, _ = load_checkpoint(out / "checkpoint")
    fresh = OnlineLearner(learner.config)
    for name, tensor in fresh.tensors().items():
        if name.endswith(("weight", "bias", "pred", "retro")):
            assert_close(learner.tensors()[name], tensor, name=name)
    assert read_metrics(out)["counters"]["blocks_skipped_nonfinite"] == 2


def test_out_that_is_a_file_is_refused(speech_folder, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code = main(["learn", "--source", str(speech_folder), "--out", str(tmp_path / "file")])
    assert code == 2 and "is a file" in capsys.readouterr().err


def test_resume_after_switching_source_continues_the_new_source(speech_folder, tmp_path):
    """A run that moved to another source resumes where it left that source."""
    other = tmp_path / "other"
    other.mkdir()
    for path in sorted((KLETTRES / "nl" / "syllab").glob("*.ogg"))[:12]:
        shutil.copy(path, other / path.name)
    out = tmp_path / "run"
    assert main(["learn", "--source", str(speech_folder), "--out", str(out), "--quiet",
                 "--max-seconds", "3"]) == 0  # fmt: skip
    assert main(["learn", "--resume", str(out), "--source", str(other), "--quiet",
                 "--max-seconds", "2"]) == 0  # fmt: skip
    extra = load_checkpoint(out / "checkpoint")[1]
    assert extra["source_spec"] == str(other) and extra["samples_consumed"] == 2 * 16000
    assert main(["learn", "--resume", str(out), "--quiet", "--max-seconds", "1"]) == 0
    extra = load_checkpoint(out / "checkpoint")[1]
    assert extra["samples_consumed"] == 3 * 16000
    assert load_checkpoint(out / "checkpoint")[0].counters.blocks == 6


def test_ctrl_c_saves_a_whole_step_and_resume_is_bit_identical(speech_folder, tmp_path):
    """SIGINT mid-run: exit 130, a checkpoint at a block boundary, and resuming it gives
    the weights of a run that was never interrupted."""
    long_folder = tmp_path / "long"
    long_folder.mkdir()
    for path in sorted((KLETTRES / "fr" / "syllab").glob("*.ogg"))[:60]:
        shutil.copy(path, long_folder / path.name)
    common = ["--source", str(long_folder), "--seed", "6", "--quiet"]
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert main(["learn", *common, "--out", str(straight), "--max-seconds", "40"]) == 0

    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_clapp.cli",
            "learn",
            *common,
            "--out",
            str(cut),
            "--max-seconds",
            "40",
            "--checkpoint-every",
            "1",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (cut / "checkpoint" / "meta.json").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    done = load_checkpoint(cut / "checkpoint")[0].counters.blocks
    if process.returncode == 0:
        pytest.skip(f"the run ended before the signal arrived ({done} blocks)")
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "stopping after this block" in stderr
    assert 1 <= done < 40
    assert read_metrics(cut)["interrupted"] is True

    left = str(40 - done)
    assert main(["learn", "--resume", str(cut), "--quiet", "--max-seconds", left]) == 0
    expected, _ = load_checkpoint(straight / "checkpoint")
    resumed, _ = load_checkpoint(cut / "checkpoint")
    for name, tensor in expected.tensors().items():
        assert_close(resumed.tensors()[name], tensor, name=name)
    assert resumed.counters == expected.counters


def test_paths_that_cannot_exist_are_source_errors(tmp_path, capsys):
    for spec, message in [("a" * 5000 + ".wav", "cannot be used as a path"),
                          ("~no_such_user_x/x.wav", "cannot be used as a path")]:  # fmt: skip
        code = main(["learn", "--source", spec, "--out", str(tmp_path / "o")])
        assert code == 2
        err = capsys.readouterr().err
        assert err.startswith("edge-clapp: error: ") and message in err, err
        assert len(err) < 600


def test_a_corrupt_file_is_named_as_corrupt_not_short(tmp_path, capsys):
    path = tmp_path / "cut.flac"
    sf.write(path, np.sin(np.arange(48000) / 9.0) * 0.3, 16000, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:100])
    code = main(["learn", "--source", str(path), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "short" not in err.split("error:")[-1], err


def test_a_closed_stderr_does_not_lose_the_run(speech_folder, tmp_path):
    """The progress bar writes to stderr; when nobody reads it any more (`2>&1 | head`
    after head has exited) the run still learns to the end and writes its checkpoint."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "edge_clapp.cli", "learn"]
    command += ["--source", str(speech_folder), "--out", str(out), "--max-seconds", "4"]
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to stderr now fails with a broken pipe
    try:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=write_end,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 0
    assert load_checkpoint(out / "checkpoint")[0].counters.blocks == 4


def test_quantisation_aware_run_from_learn_to_int8_export(speech_folder, tmp_path, capsys):
    out = tmp_path / "q"
    argv = ["learn", "--source", str(speech_folder), "--out", str(out), "--preset", "mcu"]
    assert main([*argv, "--quant", "--quiet"]) == 0
    quant = read_metrics(out)["quant"]
    assert quant["active"] and quant["input_scale"] > 0
    assert len(quant["output_scales"]) == 3 and min(quant["output_scales"]) > 0
    assert resolve_config(None, out / "config.toml").quant.enabled
    assert main(["export", str(out), "--out", str(tmp_path / "q.onnx"), "--int8"]) == 0
    assert "int8 QDQ" in capsys.readouterr().out
    # A resumed run keeps its config: --quant cannot be added or dropped there.
    assert main(["learn", "--resume", str(out), "--quant", "--quiet"]) == 2
    assert "--quant cannot change a resumed run" in capsys.readouterr().err
    plain = tmp_path / "plain"
    assert main([*argv[:4], str(plain), "--preset", "mcu", "--quiet"]) == 0
    assert read_metrics(plain)["quant"] is None
