"""Probes on the labelled speech corpus: frame times line up with what each frame sees,
every task splits as documented, a probe runs on a tiny corpus, and `edge-clapp probe`
reports and refuses clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_clapp.checkpoint import save_checkpoint
from edge_clapp.cli import main
from edge_clapp.config import resolve_config
from edge_clapp.learner import OnlineLearner
from edge_clapp.probe import (
    encode_utterances,
    frame_centres,
    probe_task,
    task_split,
)
from edge_clapp.speech_corpus import SpeechRecipe, build_speech_corpus, load_corpus

HAVE_SYNTH = shutil.which("espeak-ng") is not None and shutil.which("flite") is not None
HAVE_KLETTRES = any(Path("/usr/share/klettres").glob("*/*/*.ogg"))
needs_corpus = pytest.mark.skipif(
    not (HAVE_SYNTH and HAVE_KLETTRES),
    reason="needs espeak-ng, flite and klettres-data: run `bash scripts/setup.sh`",
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if not (HAVE_SYNTH and HAVE_KLETTRES):
        pytest.skip("needs espeak-ng, flite and klettres-data: run `bash scripts/setup.sh`")
    root = tmp_path_factory.mktemp("speech")
    recipe = SpeechRecipe(max_speakers=8, words=8, repeats=2)
    build_speech_corpus(root, recipe, show_progress=False)
    return load_corpus(root)


def test_receptive_fields_of_the_raw_preset():
    # kernels 10, 8, 4, 4, 4; strides 5, 4, 2, 2, 2 (Greedy InfoMax's geometry)
    fields = resolve_config("raw").receptive_fields()
    assert fields == [(10, 5), (45, 20), (105, 40), (225, 80), (465, 160)]


@pytest.mark.parametrize("preset", ["tiny", "mcu"])
def test_frame_windows_hold_exactly_what_changes_a_frame(preset):
    """An impulse at sample n changes exactly the frames whose window (the span
    frame_centres gives the middle of) contains n: with every unit alive (positive
    weights and bias), a window too wide or too narrow, or shifted, would differ."""
    config = resolve_config(preset)
    learner = OnlineLearner(config)
    # Positive bias so no unit is dead: every input reaches the output.
    for layer in learner.layers:
        layer.bias.fill_(100.0)
        layer.weight.abs_()
    hop, rate = config.frontend.frame_hop, config.frontend.sample_rate
    n_samples = 40 * hop
    silence = learner.encode(np.zeros(n_samples, np.float32))
    for n in (7 * hop + 3, 20 * hop + hop - 1, 31 * hop):
        x = np.zeros(n_samples, np.float32)
        x[n] = 0.9
        changed_frames = learner.encode(x)
        for li, (a, b) in enumerate(zip(silence, changed_frames, strict=True)):
            changed = torch.nonzero((a - b).abs().max(1).values > 0).flatten().tolist()
            field, jump = config.receptive_fields()[li]
            centres = frame_centres(config, li, len(a))
            half = (hop + field - jump) / 2  # samples
            windows = [(round(c * rate - half), round(c * rate + half)) for c in centres]
            inside = [i for i, (lo, hi) in enumerate(windows) if lo <= n < hi]
            assert changed == inside, (li, n)


@needs_corpus
def test_task_splits(corpus):
    synth_train = corpus.utterances("synth", "train")
    synth_test = corpus.utterances("synth", "test")
    train_speakers = {u.speaker for u in synth_train}

    train, test = task_split(corpus, "word")
    assert {u.speaker for u in test}.isdisjoint(train_speakers)
    assert {u.word for u in test} <= {u.word for u in train}

    train, test = task_split(corpus, "phoneme")
    assert all(u.phoneme_set == "espeak" for u in train + test)
    assert {u.speaker for u in test}.isdisjoint(train_speakers)

    train, test = task_split(corpus, "speaker")
    assert {u.speaker for u in train + test} <= {u.speaker for u in synth_test}
    assert {u.word for u in train}.isdisjoint({u.word for u in test})
    assert len(train) + len(test) == len(synth_test)

    train, test = task_split(corpus, "language")
    assert all(u.corpus == "klettres" for u in train + test)
    assert {u.path for u in train}.isdisjoint({u.path for u in test})


@needs_corpus
def test_phoneme_probe_on_log_mel_beats_chance(corpus):
    """Log mel energies through a random encoder carry the phoneme: if the frame labels
    were misplaced in time, the probe would fall towards chance."""
    config = resolve_config("mcu")
    learner = OnlineLearner(config)
    train, test = task_split(corpus, "phoneme")
    encoded = encode_utterances(learner, train + test)
    [result] = probe_task(config, encoded, train, test, "phoneme", layers=[1])
    frames = sum(len(encoded[u.id][0]) for u in test)
    assert result["test_count"] + result["test_dropped_unseen"] == frames
    assert result["classes"] >= 10
    assert result["accuracy"] > result["chance"] + 0.15, result

    # Shift the labels by 100 ms: the same probe loses most of what it gains over chance.
    from edge_clapp import probe as probe_module

    original = probe_module.frame_centres
    try:
        probe_module.frame_centres = lambda c, li, n: original(c, li, n) + 0.1
        [shifted] = probe_task(config, encoded, train, test, "phoneme", layers=[1])
    finally:
        probe_module.frame_centres = original
    # (Shifting moves the class balance too, towards `sil` at the ends: compare the
    # probes' lift over their own chance.)
    lift, shifted_lift = (r["accuracy"] - r["chance"] for r in (result, shifted))
    assert shifted_lift < 0.5 * lift, (shifted, result)


@needs_corpus
def test_utterance_probes_on_a_tiny_corpus(corpus):
    config = resolve_config("tiny")
    learner = OnlineLearner(config)
    for task in ("word", "speaker", "language"):
        train, test = task_split(corpus, task)
        encoded = encode_utterances(learner, train + test)
        results = probe_task(config, encoded, train, test, task, seed=0)
        assert [r["layer"] for r in results] == [1, 2, 3, 4, 5]
        for r in results:
            assert r["train_count"] == len(train) and r["test_count"] == len(test)
            assert 0.0 <= r["chance"] <= 1.0 and 0.0 <= r["accuracy"] <= 1.0
        # A probe that sees the time-averaged layer 1 output does better than chance.
        assert max(r["accuracy"] for r in results) > results[0]["chance"], task


@needs_corpus
def test_probe_command(corpus, tmp_path, capsys):
    learner = OnlineLearner(resolve_config("tiny"))
    run = tmp_path / "run"
    save_checkpoint(learner, run / "checkpoint")
    out = tmp_path / "word.json"
    code = main(
        ["probe", str(run), "--data", str(corpus.root), "--task", "word", "--quiet"]
        + ["--layer", "2", "--json", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "word probe" in printed and "chance" in printed
    data = json.loads(out.read_text())
    assert data["task"] == "word" and [r["layer"] for r in data["layers"]] == [2]

    # Refusals: one line on stderr, exit 2, no traceback.
    for argv, needle in [
        (["--layer", "9"], "layers 1..5"),
        (["--data", str(tmp_path / "nothing")], "edge-clapp data speech"),
    ]:
        base = ["probe", str(run), "--data", str(corpus.root), "--task", "word", "--quiet"]
        code = main(base + argv)
        err = capsys.readouterr().err
        assert code == 2 and needle in err and "Traceback" not in err, err
    code = main(
        ["probe", str(tmp_path / "no-run"), "--data", str(corpus.root), "--task", "word"]
    )
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_short_recordings_encode_to_no_frames():
    for preset in ("tiny", "mcu"):
        learner = OnlineLearner(resolve_config(preset))
        for n in (0, 100, 159):
            frames = learner.encode(np.full(n, 0.1, np.float32))
            assert [f.shape[0] for f in frames] == [0] * len(learner.layers)


@needs_corpus
def test_probe_refuses_bad_outputs_before_any_work(corpus, tmp_path, capsys):
    learner = OnlineLearner(resolve_config("tiny"))
    run = tmp_path / "run"
    save_checkpoint(learner, run / "checkpoint")
    meta_before = (run / "checkpoint" / "meta.json").read_bytes()
    manifest_before = (corpus.root / "manifest.json").read_bytes()
    base = ["probe", str(run), "--data", str(corpus.root), "--task", "word", "--quiet"]
    for target, needle in [
        ("/dev/null", "not a regular file"),
        (str(run / "checkpoint" / "meta.json"), "checkpoint folder"),
        (str(corpus.root / "manifest.json"), "a corpus"),
        (str(tmp_path / "no" / "such" / "r.json"), "is not a folder"),
        (str(tmp_path), "not a regular file"),
    ]:
        code = main(base + ["--json", target])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and "Traceback" not in err, (target, err)
    assert (run / "checkpoint" / "meta.json").read_bytes() == meta_before
    assert (corpus.root / "manifest.json").read_bytes() == manifest_before
    assert Path("/dev/null").is_char_device()
    for seed in ("-1", "99999999999999999999"):
        with pytest.raises(SystemExit) as exc:
            main(base + ["--seed", seed])
        assert exc.value.code == 2
