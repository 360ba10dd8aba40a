"""firmware_sim: the integer kernels (numpy, the reference), their C twins, and the
integer learner against the quantisation-aware float learner.

References: ``firmware_sim/kernels.py`` for every integer path, compared exactly (hand-
made cases, frozen golden values, the C kernels on random, saturating and real-speech
inputs). The fake-quant learner is compared with the twin with stated tolerances: output
codes >= 99 % equal and at most 1 apart; one update within 1 code per weight of the
float update on the same pairs, for >= 99 % of the weights.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edge_clapp.config import resolve_config
from edge_clapp.corpus import klettres_recordings, read_mono, split_recordings
from edge_clapp.firmware_sim import budget, qemu
from edge_clapp.firmware_sim import kernels as K
from edge_clapp.firmware_sim.ckernels import CKernels, compiler
from edge_clapp.firmware_sim.twin import IntegerLearner, TwinError
from edge_clapp.learner import OnlineLearner
from tests.helpers import assert_close


@pytest.fixture(scope="module")
def speech():
    train, held_out = split_recordings(klettres_recordings())
    return (
        np.concatenate([read_mono(r.path, 16000) for r in train[::40]]),
        [read_mono(r.path, 16000) for r in held_out[::60]],
    )


@pytest.fixture(scope="module")
def qat(speech):
    """A quantisation-aware mcu learner after 30 blocks of speech."""
    stream, _ = speech
    learner = OnlineLearner(
        resolve_config("mcu", overrides={"seed": 3, "quant": {"enabled": True}})
    )
    n = learner.config.block_samples
    for b in range(30):
        assert learner.step(stream[b * n : (b + 1) * n])
    return learner


@pytest.fixture(scope="module")
def c_kernels():
    if compiler() is None:
        pytest.skip("no C compiler (scripts/setup.sh installs gcc)")
    return CKernels()


# -- the reference kernels on hand-made cases ------------------------------------------


def test_requantize_rounds_half_up_and_saturates_at_both_ends():
    half = (1 << 30, 31)  # m0 / 2^sh = 0.5
    acc = np.array([3, -3, 5, -5, 4, 0, 1000, -1000, 2**40, -(2**40)])
    got = K.requantize(acc, *half, -128, 127)
    # 1.5 -> 2, -1.5 -> -1, 2.5 -> 3, -2.5 -> -2, 2, 0, 500 -> 127, -500 -> -128, and the
    # accumulator saturates to +-(2^31 - 1) first.
    assert got.tolist() == [2, -1, 3, -2, 2, 0, 127, -128, 127, -128]
    assert K.requantize(np.array([2**40]), 1 << 30, 62, -(2**40), 2**40).tolist() == [0]
    relu = K.requantize(np.array([-7, 300, 511, 512]), *half, 0, 255)
    assert relu.tolist() == [0, 150, 255, 255]


def test_fixed_multiplier_represents_reals_to_31_bits():
    for real in (1.0, 0.5, 0.123456789, 3.3e-7, 1234.5):
        m0, sh = K.fixed_multiplier(real)
        assert 2**30 <= m0 < 2**31
        assert abs(m0 / 2**sh - real) <= real * 2**-30
    m0, sh = K.fixed_multiplier(1e-12)  # sh is capped at 62: fewer bits, absolute 2^-62
    assert sh == 62 and abs(m0 / 2**62 - 1e-12) <= 2**-62
    m0, sh = K.fixed_multiplier(0.3, K.UPDATE_BITS)
    assert 2**21 <= m0 < 2**22
    assert K.fixed_multiplier(1e-30) == (0, 62)  # below the format: no update at all
    with pytest.raises(ValueError):
        K.fixed_multiplier(0.0)


def test_hash_golden_values_and_stochastic_rounding_is_unbiased():
    # Frozen (computed by hand-written Python integer arithmetic, masked to 32 bits): any
    # change to the PRNG changes every learned weight.
    golden = [0, 2462723854, 1020716019, 454327756]
    assert K.hash32(np.arange(4)).tolist() == golden
    assert int(K.hash32(np.array([2**32 + 1]))[0]) == golden[1]  # counters wrap at 2^32
    assert int(K.hash32(np.array([2**32 - 1]))[0]) == 918526378
    # 0.3 of a code, 100,000 times: the mean is 0.3 and each result is 0 or 1.
    m0, sh = K.fixed_multiplier(0.3, K.UPDATE_BITS)
    deltas = K.stochastic_round(np.ones(100_000, np.int64), m0, sh, seed=7)
    assert set(np.unique(deltas)) == {0, 1}
    assert abs(deltas.mean() - 0.3) < 0.005
    negative = K.stochastic_round(-np.ones(100_000, np.int64), m0, sh, seed=7)
    assert set(np.unique(negative)) == {-1, 0} and abs(negative.mean() + 0.3) < 0.005
    # Exact multiples need no noise; sh > 32 takes the pre-shift path.
    assert K.stochastic_round(np.array([8, -8]), 1, 3, seed=0).tolist() == [1, -1]
    assert K.stochastic_round(np.array([2**40 - 1]), 2**21, 40, seed=0).tolist() == [2**21 - 1]


def test_conv_forward_hand_case():
    x = np.array([[1, -2], [3, 4], [-5, 6]])  # 3 positions, 2 channels (int8 codes)
    w = np.array([[1, 2, 3, 4], [-1, 0, 0, 0]])  # patch = (ch0 t, ch0 t+1, ch1 t, ch1 t+1)
    bias = np.array([10, 0])
    patches, out = K.conv_forward(x, w, bias, kernel=2, stride=1, m0=[1 << 30] * 2, sh=[30] * 2)
    assert patches.tolist() == [[1, 3, -2, 4], [3, -5, 4, 6]]
    # channel 0: 1 + 6 - 6 + 16 + 10 = 27, 3 - 10 + 12 + 24 + 10 = 39; channel 1: -1, -3.
    assert out.tolist() == [[27, 0], [39, 0]]


# -- C against the reference -------------------------------------------------------------


def _random_accumulate_case(rng, c=6, d=10, n=12, k=3, m=8, retro=True, extreme=False):
    hi = 127 if extreme else 40
    x = rng.integers(-128, 128, (n, d)) if not extreme else np.full((n, d), -128)
    z = rng.integers(0, 256, (n, c)) if not extreme else np.full((n, c), 255)
    z[rng.random((n, c)) < 0.3] = 0
    pred = rng.integers(-hi, hi + 1, (k, c, c))
    ret = rng.integers(-hi, hi + 1, (k, c, c)) if retro else None
    context = rng.integers(0, n, (k, m))
    candidate = (context + rng.integers(1, n, (k, m))) % n
    label = rng.choice([-1, 1], (k, m))
    valid = (rng.random((k, m)) < 0.8).astype(np.int64)
    score_scale = int(np.abs(pred).mean() * 255 * 255 * c)
    threshold = np.full(k, max(score_scale // 2, 1))
    return x, z, pred, ret, context, candidate, label, valid, threshold


@pytest.mark.parametrize("extreme", [False, True])
def test_c_forward_and_rounding_equal_the_reference(c_kernels, extreme):
    rng = np.random.default_rng(11 + extreme)
    for _ in range(5):
        # Forward: random codes, and codes that drive the accumulator past int32.
        x = rng.integers(-128, 128, (20, 4))
        w = rng.integers(-127, 128, (5, 12)) if not extreme else np.full((5, 12), -127)
        bias = rng.integers(-(2**20), 2**20, 5) if not extreme else np.full(5, 2**31 - 1)
        m0 = rng.integers(2**30, 2**31, 5)
        sh = rng.integers(31, 45, 5)
        _, want_out = K.conv_forward(x, w, bias, 3, 2, m0, sh)
        assert_close(c_kernels.conv_forward(x, w, bias, 3, 2, m0, sh), want_out, name="conv")

        acc = rng.integers(-(2**45), 2**45, (5, 12))
        m0 = rng.integers(2**21, 2**22, 5)[:, None]
        sh = rng.integers(20, 62, 5)[:, None]
        want_delta = K.stochastic_round(acc, m0, sh, seed=12345)
        assert_close(c_kernels.stochastic_round(acc, m0, sh, 12345), want_delta, name="sr")
    for v in (0, 1, 2**31, 2**32 - 1):
        assert c_kernels.hash32(v) == int(K.hash32(np.array([v]))[0])
    for acc in (3, -3, 2**40, -(2**40), 12345678):
        assert c_kernels.requantize(acc, 1 << 30, 31, -128, 127) == int(
            K.requantize(np.array([acc]), 1 << 30, 31, -128, 127)[0]
        )


def _update_case(rng, extreme=False, retro=True):
    x, z, pred, ret, context, candidate, label, valid, threshold = _random_accumulate_case(
        rng, retro=retro, extreme=extreme
    )
    c, d = z.shape[1], x.shape[1]
    arrays = {
        "weight": rng.integers(-127, 128, (c, d)) if not extreme else np.full((c, d), 127),
        "bias": rng.integers(-(2**20), 2**20, c) if not extreme else np.full(c, 2**31 - 1),
        "pred": pred,
    }
    if ret is not None:
        arrays["retro"] = ret
    bits = K.UPDATE_BITS
    mult = {
        "weight": (rng.integers(2 ** (bits - 1), 2**bits, c), rng.integers(20, 50, c)),
        "bias": (rng.integers(2 ** (bits - 1), 2**bits, c), rng.integers(10, 40, c)),
        "pred": (np.array([rng.integers(2 ** (bits - 1), 2**bits)]), np.array([36])),
    }
    if extreme:  # updates far beyond the range: every array saturates
        mult = {name: (m0, np.full_like(sh, 1)) for name, (m0, sh) in mult.items()}
    seeds = {"weight": 10, "bias": 10_000, "pred": 20_000, "retro": 90_000}
    return arrays, (x, z, context, candidate, label, valid, threshold), mult, seeds


def _twin_update_case(twin, layer):
    """The twin layer's arrays, its workspace and pairs, its multipliers: one real update."""
    context, candidate, label, valid = twin._pairs(True)
    data = (layer.x_rows, layer.z, context, candidate, label, valid, layer.threshold)
    mult = layer.multipliers()
    seeds = {"weight": 1, "bias": 50_000, "pred": 60_000, "retro": 80_000}
    return layer.arrays(), data, mult, seeds


def reference_update(arrays, data, mult, seeds):
    x, z, context, candidate, label, valid, threshold = data
    acc = K.clapp_accumulate(x, z, arrays["pred"], arrays.get("retro"), context, candidate,
                             label, valid, threshold)  # fmt: skip
    return K.clapp_update(arrays, acc, mult, seeds), acc["open_gates"]


@pytest.mark.parametrize("extreme", [False, True])
@pytest.mark.parametrize("retro", [True, False])
def test_fused_c_update_equals_the_reference(c_kernels, extreme, retro):
    rng = np.random.default_rng(21 + extreme + 2 * retro)
    for _ in range(4):
        arrays, data, mult, seeds = _update_case(rng, extreme, retro)
        want, want_open = reference_update(arrays, data, mult, seeds)
        got, got_open = c_kernels.clapp_update(arrays, *data, mult, seeds)
        assert got_open == want_open
        for name in want:
            assert_close(got[name], want[name], name=name)
        if extreme:  # the saturating case saturates
            assert np.abs(got["weight"]).max() == 127 and np.abs(got["pred"]).max() == 127


def test_c_kernels_equal_the_reference_on_a_real_speech_step(c_kernels, qat, speech):
    """Every layer of the twin, one block of held-out speech: forward and accumulators."""
    _, held = speech
    twin = IntegerLearner(qat, seed=1)
    n = qat.config.block_samples
    for b in range(14):  # past the replay pool's minimum age: negatives are in use
        twin.step_samples(held[0][b * n : (b + 1) * n] if b * n + n <= len(held[0]) else
                          held[1][(b % 5) * n : (b % 5 + 1) * n])  # fmt: skip
    for layer in twin.layers:
        x = layer.input
        _, want = K.conv_forward(x, layer.weight, layer.bias, layer.kernel, layer.stride,
                                 layer.fwd_m0, layer.fwd_sh)  # fmt: skip
        got = c_kernels.conv_forward(x, layer.weight, layer.bias, layer.kernel, layer.stride,
                                     layer.fwd_m0, layer.fwd_sh)  # fmt: skip
        assert_close(got, want, name="forward")
        arrays, data, mult, seeds = _twin_update_case(twin, layer)
        want, want_open = reference_update(arrays, data, mult, seeds)
        got, got_open = c_kernels.clapp_update(arrays, *data, mult, seeds)
        assert got_open == want_open > 0
        for name in want:
            assert_close(got[name], want[name], name=f"fused {name}")
        assert (want["weight"] != arrays["weight"]).any()


# -- the twin against the fake-quant learner ---------------------------------------------


def test_twin_forward_equals_the_fake_quant_learner(qat, speech):
    _, held = speech
    twin = IntegerLearner(qat)
    equal = total = worst = 0
    for audio in held:
        want = [
            torch.round(z / layer.out_scale).numpy().astype(np.int64)
            for z, layer in zip(qat.encode_positions(audio), qat.layers, strict=True)
        ]
        features = qat.frontend.sequence(torch.as_tensor(audio[: len(audio) // 160 * 160]))
        got = twin.encode_codes(twin.quantize_features(features.numpy()))
        for g, w in zip(got, want, strict=True):
            diff = np.abs(g - w)
            equal += int((diff == 0).sum())
            total += diff.size
            worst = max(worst, int(diff.max()))
    assert total > 50_000
    assert equal / total >= 0.99 and worst <= 1, (equal / total, worst)


def test_one_twin_update_equals_the_float_update(qat, speech):
    """Same state, same pairs (all in use), the twin's P and R on its grid in both: in
    every layer the twin's expected change of weights, bias, P and R (accumulator x
    multiplier, in codes) equals the float rule's lr x update / scale within 1e-4 of the
    largest change, and each stochastically rounded weight change is within 1 code."""
    stream, _ = speech
    learner = OnlineLearner(qat.config)
    for name, tensor in qat.tensors().items():
        learner.tensors()[name].copy_(tensor)
    learner.counters = type(qat.counters)(**qat.counters.__dict__)
    twin = IntegerLearner(learner, seed=5)
    seen: dict = {}
    for i, (layer, tw) in enumerate(zip(learner.layers, twin.layers, strict=True)):
        layer.pred.copy_(torch.from_numpy(tw.pred * tw.p_scale).float())
        layer.retro.copy_(torch.from_numpy(tw.retro * tw.p_scale).float())

        def keep_rows(layer=layer, i=i, commit=layer.commit_block):
            seen[i] = layer.x_rows.clone(), layer.z_rows.clone()  # before the ring moves
            commit()

        layer.commit_block = keep_rows
    original_pairs = learner._pairs

    def keep_pairs(have_negatives):
        seen["pairs"] = original_pairs(have_negatives)
        return seen["pairs"]

    learner._pairs = keep_pairs
    # The twin's scales are frozen at conversion: freeze the learner's observers too.
    for observer in [learner.input_observer] + [la.out_observer for la in learner.layers]:
        observer.observe = lambda x: None
    before = [{k: v.clone() for k, v in la.parameters().items()} for la in learner.layers]
    n = learner.config.block_samples
    assert learner.step(stream[40 * n : 41 * n])
    pairs = seen["pairs"]
    assert bool((pairs.weight > 0).all()), "the comparison needs every pair in use"
    in_scales = learner.input_scales()
    for i, (layer, tw) in enumerate(zip(learner.layers, twin.layers, strict=True)):
        x_codes = torch.round(seen[i][0] / in_scales[i]).long().numpy()
        z_codes = torch.round(seen[i][1] / layer.out_scale).long().numpy()
        acc = K.clapp_accumulate(
            x_codes, z_codes, tw.pred, tw.retro, pairs.context.numpy(),
            pairs.candidate.numpy(), pairs.label.long().numpy(),
            np.ones_like(pairs.context.numpy()), tw.threshold,
        )  # fmt: skip
        bias_scale = tw.scales["input"] * tw.scales["weight"]
        units = {
            "weight": tw.scales["weight"][:, None],
            "bias": bias_scale,
            "pred": tw.p_scale,
            "retro": tw.p_scale,
        }
        for name, unit in units.items():
            pairs_ = tw.mult["pred" if name == "retro" else name]
            m0, sh = (np.array(v) for v in zip(*pairs_, strict=True))
            if name == "weight":
                m0, sh = m0[:, None], sh[:, None]
            expected = acc[name] * (m0 / 2.0**sh)
            change = getattr(layer, name) - before[i][name]
            float_delta = change.double().numpy() / unit
            largest = np.abs(float_delta).max()
            assert largest > 1e-3, f"layer {i + 1} {name}: too small to test anything"
            error = np.abs(expected - float_delta).max()
            assert error <= 1e-4 * largest, (i + 1, name, error, largest)
            if name == "weight":
                delta = K.stochastic_round(acc[name], m0, sh, seed=99)
                assert np.abs(delta - expected).max() < 1.0


def test_twin_seeds_give_their_own_streams_and_c_hashes_alike(qat, speech, c_kernels):
    stream, _ = speech
    a, b = IntegerLearner(qat, seed=0), IntegerLearner(qat, seed=1)
    n = qat.config.block_samples
    for block in range(60, 66):
        a.step_samples(stream[block * n : (block + 1) * n])
        b.step_samples(stream[block * n : (block + 1) * n])
    assert not np.array_equal(a.layers[0].weight, b.layers[0].weight)
    for counter in (0, 1, 2**32 - 1, 2**32, 5 * 2**32 + 7, 2**64 - 1):
        assert c_kernels.counter_hash(counter) == int(K.counter_hash(np.uint64(counter)))
    assert int(K.counter_hash(np.uint64(7))) == int(K.hash32(np.uint64(7)))
    with pytest.raises(ValueError, match="shift"):
        K.stochastic_round(np.ones(3), 2**21, 63, seed=0)
    with pytest.raises(ValueError, match="m0"):
        K.requantize(np.ones(3), 2**31, 31, 0, 255)


def test_twin_learns_in_integers_only_and_stays_in_range(qat, speech):
    stream, _ = speech
    twin = IntegerLearner(qat, seed=2)
    start = [layer.weight.copy() for layer in twin.layers]
    n = qat.config.block_samples
    for b in range(60, 160):
        twin.step_samples(stream[b * n : (b + 1) * n])
    for layer, w0 in zip(twin.layers, start, strict=True):
        assert (layer.weight != w0).mean() > 0.05  # integer updates do move the weights
        for name, a in layer.arrays().items():
            assert a.dtype == np.int64, name
        assert np.abs(layer.weight).max() <= 127 and np.abs(layer.pred).max() <= 127
        assert 0 <= layer.z.min() and layer.z.max() <= 255
    assert all(g > 0 for g in twin.open_gates)


def test_twin_refuses_what_it_cannot_run():
    with pytest.raises(TwinError, match="not learned with quantisation"):
        IntegerLearner(OnlineLearner(resolve_config("mcu")))
    raw = OnlineLearner(resolve_config("tiny", overrides={"quant": {"enabled": True}}))
    raw.step(np.zeros(raw.config.block_samples, np.float32))
    with pytest.raises(TwinError, match="front end is not log-mel"):
        IntegerLearner(raw)


# -- the same C on an emulated Cortex-M7 -------------------------------------------------


@pytest.fixture(scope="module")
def emulator():
    why = qemu.toolchain_missing()
    if why:
        pytest.skip(why)
    return qemu


def test_cortex_m7_results_are_bit_identical_to_the_reference(emulator, qat, speech):
    """Random, saturating and real-speech cases of every kernel in one QEMU boot; also
    the SysTick calibration (40 instructions per tick under -icount shift=0)."""
    rng = np.random.default_rng(5)
    cases, expected = [], []
    x, w = rng.integers(-128, 128, (20, 4)), np.full((5, 12), -127)
    bias, m0, sh = np.full(5, 2**31 - 1), rng.integers(2**30, 2**31, 5), rng.integers(31, 45, 5)
    cases.append(qemu.Case("conv", (x, w, bias, 3, 2, m0, sh)))
    expected.append({"out": K.conv_forward(x, w, bias, 3, 2, m0, sh)[1]})
    acc = rng.integers(-(2**45), 2**45, (5, 12))
    m0, sh = rng.integers(2**21, 2**22, (5, 1)), rng.integers(20, 62, (5, 1))
    cases.append(qemu.Case("round", (acc, m0, sh, 4242)))
    expected.append({"delta": K.stochastic_round(acc, m0, sh, 4242)})
    # Real speech: the twin's first layer after a block of held-out speech.
    _, held = speech
    twin = IntegerLearner(qat, seed=1)
    n = qat.config.block_samples
    for b in range(12):
        twin.step_samples(held[1][(b % 5) * n : (b % 5 + 1) * n])
    layer = twin.layers[0]
    conv = (layer.input, layer.weight, layer.bias, layer.kernel, layer.stride, layer.fwd_m0,
            layer.fwd_sh)  # fmt: skip
    cases.append(qemu.Case("conv", conv))
    expected.append({"out": K.conv_forward(*conv)[1]})
    for extreme, retro in ((False, True), (True, True), (False, False)):
        arrays, data, mult, seeds = _update_case(rng, extreme, retro)
        cases.append(qemu.Case("update", (arrays, data, mult, seeds, 127)))
        want, open_gates = reference_update(arrays, data, mult, seeds)
        expected.append({**want, "open_gates": open_gates})
    arrays, data, mult, seeds = _twin_update_case(twin, layer)
    cases.append(qemu.Case("update", (arrays, data, mult, seeds, 127)))
    want, open_gates = reference_update(arrays, data, mult, seeds)
    expected.append({**want, "open_gates": open_gates})
    cases.append(qemu.Case("calibrate", (1_000_000,)))

    results = qemu.run_cases(cases)
    for i, (got, want) in enumerate(zip(results[:-1], expected, strict=True)):
        for name, value in want.items():
            if name == "score":
                continue
            if value is None or isinstance(value, int):
                assert got[name] == value, (i, name)
            else:
                assert_close(got[name], value, name=f"case {i} {name}")
        assert got["ticks"] > 0
    assert 2_000_000 / results[-1]["ticks"] == pytest.approx(
        qemu.INSTRUCTIONS_PER_TICK, rel=1e-3
    )


def test_kernel_object_size_is_reported(emulator):
    size = qemu.kernel_size()
    assert 0 < size["text"] < 64 * 1024 and size["ram"] < 1024


# -- the device budget --------------------------------------------------------------------


def test_memory_plan_matches_the_twin_buffers(qat):
    """Every planned learner buffer has the size of the twin's (and the C kernels')."""
    twin = IntegerLearner(qat)
    plan = budget.plan_memory(qat.config, code_bytes=1000)
    sram = {(b.name, b.layer): b.bytes for b in plan if b.region == "sram"}
    for i, layer in enumerate(twin.layers, start=1):
        assert sram["weights (int8)", i] == layer.weight.size
        assert sram["bias (int32)", i] == 4 * layer.bias.size
        assert sram["prediction matrices (int8)", i] == layer.pred.size + layer.retro.size
        assert sram["input with carry (codes)", i] == layer.input.size
        assert sram["negative input, zero carry (codes)", i] == layer.input.size
        assert sram["patch workspace (codes)", i] == layer.x_rows.size
        assert sram["output workspace (codes)", i] == layer.z.size
    widest = max(layer.z.size for layer in twin.layers)
    assert sram["frame errors (int64, shared)", None] == 8 * widest
    assert sram["replay pool (front-end codes)", None] == twin.pool.size + 8 * len(twin.pool)


def test_simulate_reports_fits_and_refuses(qat, tmp_path, capsys):
    from edge_clapp.checkpoint import save_checkpoint
    from edge_clapp.cli import main

    save_checkpoint(qat, tmp_path / "mcu" / "checkpoint")
    report, chart = tmp_path / "f746.json", tmp_path / "f746.png"
    argv = ["simulate", str(tmp_path / "mcu"), "--board", "STM32F746"]
    assert main([*argv, "--json", str(report), "--png", str(chart)]) == 0
    out = capsys.readouterr().out
    assert "fits STM32F746 in memory" in out and "real time by the cycle model" in out
    data = json.loads(report.read_text())
    assert data["memory"]["sram_bytes"] <= 141 * 1024  # the tiny-training footprint
    assert data["cycles"]["realtime_margin"] >= 2
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["verdict"] == {
        "fits_memory": True,
        "realtime_by_cycle_model": True,
        "realtime_margin_by_cycle_model": data["cycles"]["realtime_margin"],
    }
    # A wider mcu does not fit the nRF52840: refused, with what is missing.
    wide = resolve_config(
        "mcu", overrides={"layers": [{"kind": "conv1d", "channels": 160, "kernel": 3}] * 3}
    )
    save_checkpoint(OnlineLearner(wide), tmp_path / "wide" / "checkpoint")
    assert main(["simulate", str(tmp_path / "wide"), "--board", "nrf52840"]) == 2
    err = capsys.readouterr().err
    assert "does not fit nRF52840" in err and "missing" in err and "largest buffer" in err
    # The raw preset is not of the kind the twin runs; --measure needs a --quant run.
    save_checkpoint(OnlineLearner(resolve_config("raw")), tmp_path / "raw" / "checkpoint")
    assert main(["simulate", str(tmp_path / "raw"), "--board", "stm32h743"]) == 2
    assert "runs configs of the mcu kind" in capsys.readouterr().err
    assert main(["simulate", str(tmp_path / "wide"), "--board", "stm32h743", "--measure"]) == 2
    assert "needs a run learned with `edge-clapp learn --quant`" in capsys.readouterr().err
    assert main([*argv[:2], "--board", "esp32"]) == 2
    assert "unknown board 'esp32'" in capsys.readouterr().err


def test_simulate_measures_the_kernels_under_qemu(emulator, qat):
    from edge_clapp.firmware_sim.simulate import simulate

    report = simulate(qat, "stm32h743", measure_kernels=True)
    kernels = report["measured"]["kernels"]
    assert [k["kernel"] for k in kernels] == ["forward", "update"] * 3
    assert all(k["instructions_per_hop"] > 1000 for k in kernels)


def test_int16_shadow_keeps_codes_as_the_rounded_shadow(qat, speech):
    stream, _ = speech
    twin = IntegerLearner(qat, seed=4, shadow_bits=8)
    n = qat.config.block_samples
    for b in range(60, 100):
        twin.step_samples(stream[b * n : (b + 1) * n])
    for layer, shadow in zip(twin.layers, twin.shadows, strict=True):
        for name, value in shadow.items():
            assert np.abs(value).max() <= 127 << 8
            codes = np.clip((value + 128) >> 8, -127, 127)
            assert np.array_equal(getattr(layer, name), codes), name
        assert (shadow["weight"] & 0xFF).any()  # updates below one code are kept
    with pytest.raises(TwinError, match="shadow_bits"):
        IntegerLearner(qat, shadow_bits=17)
