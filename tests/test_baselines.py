"""The baselines: the backprop encoder computes the learner's features, the autograd form
of the rule equals the explicit rule, every method trains, and their costs are measured."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from edge_clapp.baselines import (
    METHODS,
    AutogradLearner,
    BackpropStreamer,
    Encoder,
    TrainSettings,
    train_baseline,
)
from edge_clapp.config import resolve_config
from edge_clapp.errors import ConfigError
from edge_clapp.learner import OnlineLearner, all_finite, draw_pairs
from tests.helpers import relative_error

# float32 matmuls summed in different orders: relative differences of a few 1e-7; the
# bound leaves an order of magnitude.
TOL = 1e-5


def _speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise bursts with pauses: frames differ, so scores and updates are not trivial."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    envelope = (np.sin(np.arange(n) / 16000 * 2 * np.pi * 3) > 0).astype(np.float32)
    tone = np.sin(np.arange(n) / 16000 * 2 * np.pi * rng.uniform(150, 400))
    return ((0.2 * tone + 0.05 * rng.standard_normal(n)) * envelope).astype(np.float32)


@pytest.mark.parametrize("preset", ["tiny", "mcu"])
def test_encoder_equals_learner_encode(preset):
    config = resolve_config(preset)
    learner = OnlineLearner(config)
    # Give the weights something learned-like: a few blocks of the rule.
    audio = _speechlike(8.0)
    bs = config.block_samples
    for b in range(4):
        learner.step(audio[b * bs : (b + 1) * bs])
    x = audio[: len(audio) // 160 * 160]
    expected = learner.encode(x)
    params = [layer.parameters() for layer in learner.layers]
    got = Encoder(config, params)(torch.from_numpy(x)[None])
    for e, g in zip(expected, got, strict=True):
        assert e.shape == g[0].shape
        assert relative_error(g[0].detach(), e) < TOL


@pytest.mark.parametrize("variant", ["clapp", "clapp-s"])
def test_autograd_form_equals_explicit_rule(variant):
    """At every block of a stream with negatives (replayed and natural), on the same
    workspace, the autograd form's update equals the explicit rule's: weights, bias, P and
    R, in float64 (tests/test_rule.py proves the rule itself against autograd; this checks
    the autograd form the cost benchmark times)."""
    from edge_clapp.baselines import autograd_clapp_step
    from edge_clapp.rule import Pairs, clapp_step

    config = resolve_config("tiny", overrides={"rule": {"variant": variant}})
    learner = OnlineLearner(config)
    seen = {"negatives": 0, "blocks": 0, "worst": 0.0}

    def both(index, layer, pairs):
        d64 = {n: t.double() for n, t in layer.parameters().items()}
        x = layer.x_rows.double()
        z = torch.relu(torch.addmm(d64["bias"], x, d64["weight"].t()))
        pairs64 = Pairs(
            pairs.context, pairs.candidate, pairs.label.double(), pairs.weight.double()
        )
        explicit = clapp_step(x, z, layer.g, d64["pred"], d64.get("retro"), pairs64)
        view = SimpleNamespace(x_rows=x, g=layer.g, **{"retro": None, **d64})
        autograd = autograd_clapp_step(view, pairs64)
        for name in ("weight", "bias", "pred", "retro"):
            a, b = getattr(explicit, name), getattr(autograd, name)
            if a is None:
                assert b is None and variant == "clapp-s"
                continue
            if a.abs().max() > 0:
                seen["worst"] = max(seen["worst"], relative_error(b, a))
        assert int(explicit.gate_open) == int(autograd.gate_open)
        seen["negatives"] += int(explicit.neg_count)
        seen["blocks"] += 1
        return OnlineLearner._rule_step(learner, index, layer, pairs)

    learner._rule_step = both
    audio = np.concatenate([_speechlike(3.0, seed) for seed in range(4)])
    bs = config.block_samples
    for b in range(len(audio) // bs):
        learner.step(audio[b * bs : (b + 1) * bs], starts=[0] if b % 15 == 7 else [])
    assert seen["blocks"] == 5 * (len(audio) // bs)
    assert seen["negatives"] > 1000, seen
    assert seen["worst"] < 1e-12, seen


@pytest.mark.parametrize("method", METHODS)
def test_each_baseline_trains(method):
    config = resolve_config("tiny")
    audio = [_speechlike(2.0, seed) for seed in range(6)]
    words = ["a", "b", "c"] * 2
    settings = TrainSettings(method, epochs=1.0, batch=2, window_frames=64)
    learner, losses = train_baseline(config, audio, settings, words=words)
    initial = OnlineLearner(config)
    assert len(losses) >= 3 and all(np.isfinite(losses))
    moved = [
        float((a.weight - b.weight).abs().max())
        for a, b in zip(learner.layers, initial.layers, strict=True)
    ]
    if method == "hinge-cpc" or method == "supervised":
        assert moved[0] > 0 and moved[-1] > 0  # end to end: the first layer learns too
    else:
        assert all(m > 0 for m in moved)
    assert all(all_finite(t) for t in learner.tensors().values() if t.is_floating_point())


def test_greedy_losses_send_no_gradient_between_layers():
    """gim and clapp-batch detach every layer's input: the gradient of all layers' losses
    with respect to the first layer's weights is that of the first layer's loss alone;
    end to end (hinge-cpc) the last layer's loss reaches the first layer."""
    from edge_clapp.baselines import hinge_cpc_loss, infonce_loss

    enc = Encoder(resolve_config("tiny"))
    x = torch.from_numpy(_speechlike(1.28))[None]
    segments = torch.zeros(1, 128, dtype=torch.int64)
    segments[:, 70:] = 1  # a recording boundary inside the window

    def layer_loss(kind, i, z):
        gen = torch.Generator().manual_seed(i)
        if kind == "gim":
            return infonce_loss(z, segments, enc.preds[i], gen, negatives=4)
        return hinge_cpc_loss(z, segments, enc.preds[i], enc.retro(i), gen)

    for kind in ("gim", "clapp-batch"):
        frames = enc(x, detach_inputs=True)
        total = sum(layer_loss(kind, i, z) for i, z in enumerate(frames))
        (g_all,) = torch.autograd.grad(total, [enc.weights[0]])
        frames = enc(x, detach_inputs=True)
        (g_first,) = torch.autograd.grad(layer_loss(kind, 0, frames[0]), [enc.weights[0]])
        assert g_first.abs().max() > 0, kind
        assert torch.equal(g_all, g_first), kind
    frames = enc(x, detach_inputs=False)
    (g_end,) = torch.autograd.grad(layer_loss("clapp", 4, frames[-1]), [enc.weights[0]])
    assert g_end.abs().max() > 0


def test_backprop_streamer_learns_through_every_layer():
    config = resolve_config("tiny")
    streamer = BackpropStreamer(config)
    w0 = [w.detach().clone() for w in streamer.encoder.weights]
    audio = _speechlike(8.0)
    bs = config.block_samples
    losses = [streamer.step(audio[b * bs : (b + 1) * bs]) for b in range(len(audio) // bs)]
    assert all(np.isfinite(losses))
    for w, before in zip(streamer.encoder.weights, w0, strict=True):
        assert float((w.detach() - before).abs().max()) > 0


@pytest.mark.parametrize("preset", ["tiny", "mcu"])
def test_backprop_streamer_does_the_learners_work(preset):
    """With lr 0 both stay at their initial weights: the streamer draws the same replayed
    blocks and pairs as the learner, and its ring frames (recomputed from kept audio) are
    the frames the stream computed."""
    config = resolve_config(preset, overrides={"rule": {"lr": 0.0}})
    streamer, learner = BackpropStreamer(config), OnlineLearner(config)
    audio = np.concatenate([_speechlike(2.0, seed) for seed in range(3)])
    bs = config.block_samples
    blocks = len(audio) // bs
    for b in range(blocks):
        starts = [100] if b == 5 else []
        streamer.step(audio[b * bs : (b + 1) * bs], starts)
        learner.step(audio[b * bs : (b + 1) * bs], starts)
    assert torch.equal(streamer.segment, learner.segment)
    assert torch.equal(streamer.pool.stamp, learner.pool.stamp)
    assert torch.equal(streamer.generator.get_state(), learner.generator.get_state())
    a = draw_pairs(config.rule, streamer.ring_valid, streamer.segment, streamer.generator, True)
    b = draw_pairs(config.rule, learner.ring_valid, learner.segment, learner.generator, True)
    assert torch.equal(a.candidate, b.candidate) and torch.equal(a.label, b.label)
    ring = streamer.encoder(streamer.history[None])[-1][0][streamer.lead :].detach()
    streamed = learner.encode(audio[: blocks * bs])[-1][-config.rule.offsets :]
    assert relative_error(ring, streamed) < TOL


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="unknown"):
        TrainSettings("adam")
    with pytest.raises(ConfigError, match="epochs"):
        TrainSettings("gim", epochs=0)
    with pytest.raises(ConfigError, match="word label"):
        train_baseline(resolve_config("tiny"), [_speechlike(2.0)], TrainSettings("supervised"))
    with pytest.raises(ConfigError, match="shorter than one window"):
        train_baseline(resolve_config("tiny"), [_speechlike(0.1)], TrainSettings("gim"))
    with pytest.raises(ConfigError, match="quant"):
        AutogradLearner(resolve_config("tiny", overrides={"quant": {"enabled": True}}))


def test_all_finite_fast_path_and_overflow():
    assert all_finite(torch.ones(10))
    big = torch.full((4,), 3e38)  # finite elements whose float32 sum overflows
    assert not np.isfinite(float(big.sum()))
    assert all_finite(big)
    for bad in (float("nan"), float("inf"), float("-inf")):
        t = torch.ones(1000)
        t[537] = bad
        assert not all_finite(t)
    mixed = torch.tensor([float("inf"), float("-inf")])  # sums to NaN
    assert not all_finite(mixed)
