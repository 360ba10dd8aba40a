"""Quantisation-aware learning: the grid, the observers, straight-through updates, QAT
learning on real speech, checkpoints.

Reference for the grid: ONNX QuantizeLinear / DequantizeLinear as onnx's reference
evaluator computes them, compared exactly (integers) on hand-made ties and saturating
values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from edge_clapp.checkpoint import load_checkpoint, save_checkpoint
from edge_clapp.config import Config, QuantConfig, resolve_config
from edge_clapp.corpus import klettres_recordings, read_mono, split_recordings
from edge_clapp.errors import ConfigError
from edge_clapp.learner import OnlineLearner
from edge_clapp.quant import INT8, UINT8, RangeObserver, quantize, weight_scales
from tests.helpers import assert_close
from tests.test_learner import all_finite, gap_gains, stream_blocks

QUANT = {"quant": {"enabled": True}}


@pytest.fixture(scope="module")
def speech():
    train, held_out = split_recordings(klettres_recordings())
    return (
        [read_mono(r.path, 16000) for r in train[::3]],
        [read_mono(r.path, 16000) for r in held_out[::6]],
    )


def _onnx_quantize(x: np.ndarray, scale: np.float32, signed: bool) -> np.ndarray:
    elem = TensorProto.INT8 if signed else TensorProto.UINT8
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])
    graph = helper.make_graph(
        [node],
        "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [len(x)])],
        [helper.make_tensor_value_info("y", elem, [len(x)])],
        [
            helper.make_tensor("s", TensorProto.FLOAT, [], [float(scale)]),
            helper.make_tensor("z", elem, [], [0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    return ReferenceEvaluator(model).run(None, {"x": x})[0]


@pytest.mark.parametrize("signed", [True, False])
def test_quantize_equals_onnx_quantizelinear(signed):
    scale = np.float32(0.1)
    # Ties (x.5 steps round to even), values beyond both ends, and random ones.
    ties = (np.arange(-300, 300) + 0.5).astype(np.float32) * scale
    ends = np.array([-1e6, -12.9, -12.8, 12.7, 25.5, 25.6, 1e6], dtype=np.float32)
    noise = np.random.default_rng(0).normal(0, 10, 1000).astype(np.float32)
    x = np.concatenate([ties, ends, noise])
    ours = quantize(torch.from_numpy(x), torch.tensor(scale), INT8 if signed else UINT8)
    theirs = _onnx_quantize(x, scale, signed)
    assert_close(ours.numpy().astype(np.int64), theirs.astype(np.int64), name="codes")
    lo, hi = INT8 if signed else UINT8
    assert ours.min() == lo and ours.max() == hi  # both ends saturate


def test_weight_scales_are_per_output_channel_and_reach_the_bound():
    w = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 1.0, -2.0]])
    scales = weight_scales(w, bits=7)
    assert_close(scales, torch.tensor([1.0 / 63, 1.0, 3.0 / 63]), rtol=1e-7)
    codes = torch.round(w / scales[:, None])
    assert codes.abs().amax(dim=1).tolist() == [63.0, 0.0, 63.0]


def test_observers_minmax_and_percentile():
    x = torch.cat([torch.linspace(-1, 1, 10001), torch.tensor([50.0])])
    minmax = RangeObserver(QuantConfig(enabled=True), signed=True)
    pct = RangeObserver(QuantConfig(enabled=True, observer="percentile", percentile=99.0), True)
    minmax.observe(x)
    pct.observe(x)
    assert float(minmax.range) == 50.0  # the outlier sets the range
    assert 0.97 < float(pct.range) < 1.0  # the outlier is clipped
    # Smoothing: r <- 0.9 r + 0.1 new.
    minmax.observe(torch.tensor([10.0]))
    assert float(minmax.range) == pytest.approx(0.9 * 50 + 0.1 * 10)
    minmax.observe(torch.tensor([float("nan")]))  # ignored
    assert float(minmax.range) == pytest.approx(46.0)


def _on_grid(values: torch.Tensor, scale: torch.Tensor, bounds) -> bool:
    codes = values / scale
    return bool(
        torch.allclose(codes, codes.round(), atol=1e-3)
        and codes.min() >= bounds[0] - 1e-3
        and codes.max() <= bounds[1] + 1e-3
    )


def test_forward_runs_on_the_grid_and_updates_reach_the_float_weights(speech):
    train_audio, _ = speech
    learner = OnlineLearner(resolve_config("mcu", overrides={"seed": 2, **QUANT}))
    blocks = list(stream_blocks(train_audio, learner.config.block_samples, seconds=20))
    for samples, starts in blocks[:-1]:
        assert learner.step(samples, starts)
    before = [layer.weight.clone() for layer in learner.layers]
    assert learner.step(*blocks[-1])
    bits = learner.config.quant.weight_bits
    for i, layer in enumerate(learner.layers):
        # Outputs of this block (ring, current, negative) on the uint8 grid.
        assert _on_grid(layer.z_rows, layer.out_scale, UINT8), f"layer {i + 1} outputs"
        # The grid's weights: at most 2^bits - 1 levels per output channel; and the
        # float weights moved off the grid (updates are not rounded away).
        codes = layer.weight_q / weight_scales(before[i], bits)[:, None]
        assert torch.allclose(codes, codes.round(), atol=1e-3), f"layer {i + 1} weights"
        assert codes.abs().max() <= 2 ** (bits - 1) - 1 + 1e-3
        assert not torch.equal(layer.weight, before[i]), f"layer {i + 1} did not learn"
        assert not _on_grid(layer.weight, weight_scales(layer.weight, bits)[:, None], INT8)
    # Encoded positions of any recording lie on the grid too.
    positions = learner.encode_positions(train_audio[0])
    for z, layer in zip(positions, learner.layers, strict=True):
        assert _on_grid(z, layer.out_scale, UINT8)
    float_positions = learner.encode_positions(train_audio[0], float_weights=True)
    assert not _on_grid(float_positions[-1], learner.layers[-1].out_scale, UINT8)


def test_warmup_keeps_the_forward_pass_float_then_switches(speech):
    train_audio, _ = speech
    config = resolve_config(
        "tiny", overrides={"seed": 3, "quant": {"enabled": True, "warmup_blocks": 4}}
    )
    learner = OnlineLearner(config)
    blocks = stream_blocks(train_audio, config.block_samples, seconds=10)
    for b, (samples, starts) in enumerate(blocks):
        active = learner.quant_active
        assert active == (b >= 4)
        assert learner.step(samples, starts)
        layer = learner.layers[-1]
        assert float(layer.out_observer.range) > 0  # observed from the first block
        rows = layer.frame_rows(layer.offsets, layer.block_frames)
        assert _on_grid(layer.z_rows[rows], layer.out_scale, UINT8) == active, b
        if b == 6:
            break


def test_qat_learns_on_real_speech(speech):
    """mcu with the int8 forward pass: the held-out score gap grows on every layer, as
    in float (tests/test_learner.py asks the same 0.5 of the float mcu learner)."""
    train_audio, held_audio = speech
    learner = OnlineLearner(resolve_config("mcu", overrides={"seed": 1, **QUANT}))
    gains = gap_gains(learner, train_audio, held_audio, 300)
    assert min(gains) > 0.5, f"gap gains per layer: {gains}"
    assert learner.counters.updates_rejected_nonfinite == 0
    assert all_finite(learner)


def test_qat_checkpoint_resumes_bit_identically(speech, tmp_path):
    train_audio, _ = speech
    config = resolve_config("tiny", overrides={"seed": 5, **QUANT})
    blocks = list(stream_blocks(train_audio[:10], config.block_samples))
    half = len(blocks) // 2
    straight = OnlineLearner(config)
    for samples, starts in blocks:
        straight.step(samples, starts)
    first = OnlineLearner(config)
    for samples, starts in blocks[:half]:
        first.step(samples, starts)
    save_checkpoint(first, tmp_path / "ckpt")
    resumed, _ = load_checkpoint(tmp_path / "ckpt")
    assert resumed.config.quant.enabled
    for samples, starts in blocks[half:]:
        resumed.step(samples, starts)
    expected = straight.tensors()
    assert "quant.input_range" in expected and "layers.0.out_range" in expected
    for name, tensor in resumed.tensors().items():
        assert_close(tensor, expected[name], name=name)


def test_score_scale_multiplies_the_scores():
    base = resolve_config("tiny", overrides={"seed": 0})
    scaled = resolve_config("tiny", overrides={"seed": 0, "rule": {"score_scale": [2.0] * 5}})
    a, b = OnlineLearner(base), OnlineLearner(scaled)
    samples = np.random.default_rng(0).normal(0, 0.1, base.block_samples).astype(np.float32)
    a.step(samples)
    b.step(samples)
    for ma, mb in zip(a.meters, b.meters, strict=True):
        assert mb.pos_score == pytest.approx(2 * ma.pos_score, rel=1e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"quant": {"weight_bits": 6}}, "weight_bits"),
        ({"quant": {"weight_bits": True}}, "weight_bits"),
        ({"quant": {"weight_bits": 7.0}}, "weight_bits"),
        ({"quant": {"enabled": "yes"}}, "quant.enabled"),
        ({"quant": {"observer": "mean"}}, "quant.observer"),
        ({"quant": {"percentile": 10}}, "quant.percentile"),
        ({"quant": {"momentum": 1.0}}, "quant.momentum"),
        ({"quant": {"warmup_blocks": -1}}, "quant.warmup_blocks"),
        ({"quant": {"colour": 1}}, "unknown config keys"),
        ({"rule": {"score_scale": [1.0, 2.0]}}, "one per layer"),
        ({"rule": {"score_scale": [0.0] * 5}}, "score_scale"),
        ({"rule": {"score_scale": 2.0}}, "list of numbers"),
    ],
)
def test_bad_quant_and_score_scale_configs_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config("tiny", overrides=overrides)


def test_quant_and_score_scale_round_trip_through_toml(tmp_path):
    config = resolve_config(
        "tiny",
        overrides={
            "quant": {"enabled": True, "observer": "percentile", "warmup_blocks": 3},
            "rule": {"score_scale": [1.0, 0.5, 0.25, 2.0, 4.0]},
        },
    )
    path = tmp_path / "c.toml"
    path.write_text(config.to_toml())
    again = resolve_config(None, path)
    assert again == config
    assert Config.from_dict(config.to_dict()) == config


def test_runaway_learning_rate_under_quantisation_keeps_checkpoints_loadable(speech, tmp_path):
    train_audio, _ = speech
    config = resolve_config("tiny", overrides={"rule": {"lr": 1e30}, **QUANT})
    learner = OnlineLearner(config)
    for samples, starts in stream_blocks(train_audio, config.block_samples, seconds=15):
        learner.step(samples, starts)
    assert all_finite(learner)
    save_checkpoint(learner, tmp_path / "ckpt")
    resumed, _ = load_checkpoint(tmp_path / "ckpt")  # no NaN grid weights in the state
    assert resumed.counters == learner.counters


def test_silent_blocks_leave_the_activation_ranges_alone(speech):
    train_audio, _ = speech
    learner = OnlineLearner(resolve_config("tiny", overrides={"seed": 2, **QUANT}))
    n = learner.config.block_samples
    for samples, starts in stream_blocks(train_audio, n, seconds=8):
        learner.step(samples, starts)
    ranges = [float(learner.input_observer.range)] + [
        float(layer.out_observer.range) for layer in learner.layers
    ]
    for _ in range(30):  # digital silence, then near silence
        learner.step(np.zeros(n, np.float32))
        learner.step(np.full(n, 1e-5, np.float32))
    after = [float(learner.input_observer.range)] + [
        float(layer.out_observer.range) for layer in learner.layers
    ]
    assert after == ranges
    assert learner.counters.silent_blocks == 60


def test_negative_activation_range_in_a_checkpoint_is_refused(speech, tmp_path):
    import json

    import safetensors.torch

    from edge_clapp import checkpoint as ckpt
    from edge_clapp.errors import CheckpointError

    train_audio, _ = speech
    learner = OnlineLearner(resolve_config("tiny", overrides=QUANT))
    for samples, starts in stream_blocks(train_audio, learner.config.block_samples, 3):
        learner.step(samples, starts)
    folder = save_checkpoint(learner, tmp_path / "c")
    meta = json.loads((folder / "meta.json").read_text())
    state = folder / meta["state_file"]
    tensors = safetensors.torch.load_file(str(state))
    tensors["layers.1.out_range"] = torch.tensor(-5.0)
    safetensors.torch.save_file(tensors, str(state))
    meta["sha256"] = ckpt.file_sha256(state)
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="layers.1.out_range = -5.0 is negative"):
        load_checkpoint(folder)
