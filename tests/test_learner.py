"""The online learner on real speech: it learns, its memory is fixed, bad samples are refused,
and a resumed run is bit-identical to an uninterrupted one."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest
import torch

from edge_clapp.checkpoint import load_checkpoint, save_checkpoint
from edge_clapp.config import resolve_config
from edge_clapp.corpus import klettres_recordings, read_mono, split_recordings
from edge_clapp.evaluate import score_gap
from edge_clapp.learner import OnlineLearner
from edge_clapp.rule import pool_frames
from tests.helpers import assert_close


@pytest.fixture(scope="module")
def speech():
    """Real recordings (klettres-data): training stream and held-out files, 16 kHz."""
    train, held_out = split_recordings(klettres_recordings())
    train_audio = [read_mono(r.path, 16000) for r in train[::3]]
    held_audio = [read_mono(r.path, 16000) for r in held_out[::6]]
    return train_audio, held_audio


def stream_blocks(recordings, block_samples, seconds=None):
    """Concatenate recordings and cut into blocks, yielding (samples, starts)."""
    stream = np.concatenate(recordings)
    bounds = np.cumsum([0] + [len(r) for r in recordings])[:-1]
    n = len(stream) // block_samples
    if seconds is not None:
        n = min(n, int(seconds * 16000) // block_samples)
    for b in range(n):
        lo, hi = b * block_samples, (b + 1) * block_samples
        yield stream[lo:hi], [int(s - lo) for s in bounds if lo <= s < hi]


def all_finite(learner):
    return all(
        bool(torch.isfinite(t).all())
        for t in learner.tensors().values()
        if t.is_floating_point()
    )


def gap_gains(learner, train_audio, held_audio, seconds):
    """Streams `seconds` of training speech (every block must be learned) and returns, per
    layer, how much the held-out score gap grew."""
    before = score_gap(learner, held_audio)
    for samples, starts in stream_blocks(train_audio, learner.config.block_samples, seconds):
        assert learner.step(samples, starts)
    after = score_gap(learner, held_audio)
    return [a["gap"] - b["gap"] for a, b in zip(after, before, strict=True)]


def test_learning_widens_the_held_out_score_gap(speech):
    train_audio, held_audio = speech
    learner = OnlineLearner(resolve_config("raw", overrides={"seed": 0}))
    gains = gap_gains(learner, train_audio, held_audio, 400)
    # Every layer separates held-out futures from other recordings better than at init,
    # by at least 0.1 (the hinge margin is 1).
    assert min(gains) > 0.1, f"gap gains per layer: {gains}"
    assert learner.counters.blocks_learned == learner.counters.blocks
    assert all_finite(learner)


def test_state_is_fixed_over_100k_frames(speech):
    """100,000 frames (1,000 s) of real speech: state_bytes constant, heap flat."""
    train_audio, _ = speech
    learner = OnlineLearner(resolve_config("tiny", overrides={"stream": {"block_frames": 100}}))
    config = learner.config
    before_first_sample = learner.state_bytes
    names_shapes = {k: (v.shape, v.dtype, v.data_ptr()) for k, v in learner.tensors().items()}
    loop = np.concatenate(train_audio)
    frames_needed = 100_000
    blocks_needed = frames_needed // config.stream.block_frames
    per_loop = len(loop) // config.block_samples

    def blocks():
        for b in range(blocks_needed):
            i = b % per_loop
            yield (
                loop[i * config.block_samples : (i + 1) * config.block_samples],
                ([0] if i == 0 else []),
            )

    it = blocks()
    for _ in range(50):  # warm-up: pool filled, allocator caches settled
        learner.step(*next(it))
    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    for samples, starts in it:
        learner.step(samples, starts)
    gc.collect()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    frames = learner.counters.blocks_learned * config.stream.block_frames
    assert frames >= frames_needed
    assert learner.state_bytes == before_first_sample
    # Same tensors, same storage: nothing was reallocated while streaming.
    assert {k: (v.shape, v.dtype, v.data_ptr()) for k, v in learner.tensors().items()} == (
        names_shapes
    )
    # Python heap growth bound: 64 KiB over 950 blocks (the counters are plain ints).
    assert current - base < 64 * 1024, f"heap grew by {current - base} bytes"
    assert all_finite(learner)


def _run(learner, blocks):
    for samples, starts in blocks:
        learner.step(samples, starts)


def test_resume_is_bit_identical(speech, tmp_path):
    train_audio, _ = speech
    config = resolve_config("tiny", overrides={"seed": 7})
    blocks = list(stream_blocks(train_audio[:20], config.block_samples))
    assert len(blocks) > 40
    half = len(blocks) // 2

    straight = OnlineLearner(config)
    _run(straight, blocks)

    first = OnlineLearner(config)
    _run(first, blocks[:half])
    save_checkpoint(first, tmp_path / "ckpt")
    resumed, _ = load_checkpoint(tmp_path / "ckpt")
    _run(resumed, blocks[half:])

    expected = straight.tensors()
    for name, tensor in resumed.tensors().items():
        assert_close(tensor, expected[name], name=name)
    assert resumed.counters == straight.counters
    assert resumed.meters == straight.meters


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_blocks_are_refused_and_counted(speech, bad):
    train_audio, _ = speech
    learner = OnlineLearner(resolve_config("tiny"))
    blocks = list(stream_blocks(train_audio[:5], learner.config.block_samples, 20))
    _run(learner, blocks[:10])
    snapshot = {k: v.clone() for k, v in learner.tensors().items()}
    samples = blocks[10][0].copy()
    samples[::97] = bad
    assert learner.step(samples) is False
    for name, tensor in learner.tensors().items():
        assert_close(tensor, snapshot[name], name=name)
    assert learner.counters.blocks_skipped_nonfinite == 1
    assert learner.counters.nonfinite_samples == len(samples[::97])
    # The next good block starts a new segment: no pair spans the gap as a positive.
    boundaries = learner.counters.boundaries
    assert learner.step(blocks[11][0])
    assert learner.counters.boundaries == boundaries + 1
    assert all_finite(learner)


def test_silence_and_clipping_keep_weights_finite(speech):
    train_audio, _ = speech
    learner = OnlineLearner(resolve_config("tiny"))
    n = learner.config.block_samples
    blocks = list(stream_blocks(train_audio[:5], n, 10))
    _run(learner, blocks[:5])
    for _ in range(20):
        assert learner.step(np.zeros(n, np.float32))
    assert learner.counters.silent_blocks == 20
    loud = np.clip(blocks[5][0] * 1e6, -3e38, 3e38).astype(np.float32)  # hard clipped, huge
    for _ in range(20):
        assert learner.step(loud)
    assert learner.counters.out_of_range_samples > 0
    assert learner.counters.saturated_samples >= learner.counters.out_of_range_samples
    _run(learner, blocks[6:])
    assert all_finite(learner)


def test_wrong_block_length_is_an_error():
    learner = OnlineLearner(resolve_config("tiny"))
    with pytest.raises(ValueError, match="expected a block of 3200 samples"):
        learner.step(np.zeros(100, np.float32))


def test_runaway_learning_rate_keeps_weights_finite_and_warns_sparingly(speech, caplog):
    """lr = 1e12 drives the scores to overflow: such updates are rejected and counted, the
    weights stay finite, and the warning comes at the 1st, 10th, 100th... rejection only."""
    train_audio, _ = speech
    learner = OnlineLearner(resolve_config("tiny", overrides={"seed": 3, "rule": {"lr": 1e12}}))
    with caplog.at_level("WARNING", logger="edge_clapp.learner"):
        _run(learner, stream_blocks(train_audio[:40], learner.config.block_samples))
    rejected = learner.counters.updates_rejected_nonfinite
    assert rejected >= 10, learner.counters
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == len(str(rejected)), warnings  # 1, 10, 100, ... up to `rejected`
    assert (
        warnings[0].startswith("1 non-finite layer update(s) rejected")
        and "--lr" in warnings[0]
    )
    assert all_finite(learner)


def test_mcu_preset_learns_on_speech_without_diverging(speech):
    """The microcontroller preset (log-mel front end, linear last layer) on real speech."""
    train_audio, held_audio = speech
    learner = OnlineLearner(resolve_config("mcu", overrides={"seed": 1}))
    gains = gap_gains(learner, train_audio, held_audio, 300)
    assert min(gains) > 0.5, f"gap gains per layer: {gains}"
    assert learner.counters.updates_rejected_nonfinite == 0
    assert all_finite(learner)


@pytest.mark.parametrize("preset", ["tiny", "mcu"])
def test_streaming_blocks_equal_the_whole_sequence(speech, preset):
    """Reference: `encode` (the whole recording in one pass from zero state). Streaming
    block by block with carries must give the same frames; float32, atol 1e-5."""
    train_audio, _ = speech
    learner = OnlineLearner(resolve_config(preset, overrides={"rule": {"lr": 0.0}}))
    config, K, F = learner.config, learner.K, learner.F
    audio = np.concatenate(train_audio[:6])
    blocks = len(audio) // config.block_samples
    assert blocks >= 5
    whole = learner.encode(audio[: blocks * config.block_samples])
    for b in range(blocks):
        lo = b * config.block_samples
        learner.step(audio[lo : lo + config.block_samples])
        for i, layer in enumerate(learner.layers):
            # After a step the ring holds the block's last K frames.
            streamed = pool_frames(layer.z_rows[layer.frame_rows(0, K)], layer.g)
            expected = whole[i][(b + 1) * F - K : (b + 1) * F]
            assert_close(streamed, expected, atol=1e-5, name=f"block {b} layer {i + 1}")


@pytest.mark.parametrize(
    "rule",
    [
        {"variant": "clapp-s"},
        {"schedule": "both", "num_negatives": 2},
        {"variant": "clapp-s", "schedule": "both"},
    ],
    ids=["clapp-s", "both-2neg", "clapp-s-both"],
)
def test_every_variant_and_schedule_learns_on_speech(speech, rule):
    train_audio, held_audio = speech
    learner = OnlineLearner(resolve_config("raw", overrides={"seed": 2, "rule": rule}))
    gains = gap_gains(learner, train_audio, held_audio[:20], 240)
    # Measured at 240 s: first layer +0.014..+0.029, deeper layers +0.078..+0.281.
    assert min(gains) > 0.005 and min(gains[1:]) > 0.05, f"gap gains per layer: {gains}"
    assert learner.counters.updates_rejected_nonfinite == 0
    assert all_finite(learner)


def _learner_with_boundary(rule, boundary):
    """A tiny learner whose ring and current frames hold one recording boundary: frames
    before current frame `boundary` are segment 0, the rest segment 1."""
    learner = OnlineLearner(resolve_config("tiny", overrides={"seed": 5, "rule": rule}))
    K, F = learner.K, learner.F
    learner.segment.zero_()
    learner.segment[K + boundary :] = 1
    learner.ring_valid.fill_(True)
    return learner, K, F


def test_pairs_either_schedule_offsets_labels_and_coin():
    learner, K, F = _learner_with_boundary({"schedule": "either"}, boundary=7)
    j = torch.arange(F)
    positives = non_crossing = 0
    for _ in range(200):
        pairs = learner._pairs(have_negatives=True)
        # Row k is offset k + 1: its context is k + 1 frames before the future frame K + j.
        for k in range(K):
            assert torch.equal(pairs.context[k], K + j - (k + 1))
        future = (K + j).expand(K, F)
        crossing = learner.segment[pairs.context] != learner.segment[future]
        assert crossing.any() and (~crossing).any()
        # Across the boundary: always the true future, always a negative.
        assert torch.equal(pairs.candidate[crossing], future[crossing])
        assert (pairs.label[crossing] == -1).all()
        # Within a recording: a positive is the true future, a negative a replayed frame.
        inside = ~crossing
        is_positive = pairs.label[inside] == 1
        assert torch.equal(pairs.candidate[inside][is_positive], future[inside][is_positive])
        assert (pairs.candidate[inside][~is_positive] >= K + F).all()
        assert (pairs.candidate < K + 2 * F).all()
        positives += int(is_positive.sum())
        non_crossing += int(inside.sum())
        assert float(pairs.weight.sum()) == pytest.approx(1.0)
    # p = 1/2: over 200 draws of ~K*F pairs the positive share is 0.5 within 0.03.
    assert abs(positives / non_crossing - 0.5) < 0.03, positives / non_crossing


def test_pairs_without_replay_negatives_keep_only_the_rest():
    learner, K, F = _learner_with_boundary({"schedule": "either"}, boundary=7)
    pairs = learner._pairs(have_negatives=False)
    replayed = pairs.candidate >= K + F
    assert replayed.any() and (pairs.weight[replayed] == 0).all()
    assert (pairs.weight[~replayed] > 0).all()


def test_pairs_both_schedule_gives_each_context_its_future_and_negatives():
    learner, K, F = _learner_with_boundary({"schedule": "both", "num_negatives": 3}, 7)
    pairs = learner._pairs(have_negatives=True)
    assert pairs.candidate.shape == (K, 4 * F)
    future = (K + torch.arange(F)).expand(K, F)
    assert torch.equal(pairs.candidate[:, :F], future)
    crossing = learner.segment[pairs.context[:, :F]] != learner.segment[future]
    assert torch.equal(pairs.label[:, :F], torch.where(crossing, -1.0, 1.0))
    assert (pairs.candidate[:, F:] >= K + F).all() and (pairs.label[:, F:] == -1).all()
    for n in range(1, 4):  # every negative column block pairs the same contexts
        assert torch.equal(pairs.context[:, n * F : (n + 1) * F], pairs.context[:, :F])
