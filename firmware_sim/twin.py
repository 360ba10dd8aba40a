"""The integer-only twin of the quantisation-aware learner: what a microcontroller would
compute, with numpy integer arrays and the kernels of ``kernels.py`` only.

It starts from a quantisation-aware learner (``OnlineLearner`` with ``[quant]`` on, past
its warm-up): the scales are read once, turned into fixed-point multipliers, and frozen,
as a device would hold them. From then on every number is an integer:

    input     int8 codes of the front end's output, one row per frame (the log-mel front
              end itself stays on the host: see Known limits in the README)
    weights   int8 codes per output channel at the learner's scales; the twin lets them
              use the whole int8 range (the learner's grid is +-63 for onnxruntime's sake)
    bias      int32 at input scale x weight scale
    outputs   uint8 relu codes, by requantize (round half up, saturate)
    P, R      int8 codes, one scale per layer shared by every offset and by P and R, with
              headroom PRED_HEADROOM over the learner's largest value
    margin    per layer, the hinge margin 1 in integer score units (threshold)
    updates   int64 accumulators x a fixed-point multiplier (learning rate, score scale,
              1 / pair slots and the scales folded in), stochastically rounded with the
              counter hash, added with saturation

Geometry: one position per frame in every layer (a log-mel front end and stride-1
layers, as the ``mcu`` preset), CLAPP or CLAPP-s, the "either" schedule. Pairs are
normalised by the number of pair slots (K x F), a constant, not by the pairs in use.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from edge_clapp.config import Config, FrontendKind, Schedule
from edge_clapp.errors import EdgeClappError
from edge_clapp.firmware_sim.kernels import (
    UPDATE_BITS,
    clapp_accumulate,
    clapp_update,
    conv_forward,
    counter_hash,
    fixed_multiplier,
)
from edge_clapp.learner import OnlineLearner
from edge_clapp.quant import quantize

PRED_HEADROOM = 2.0  # P and R codes may grow to twice the learner's largest value
INT8_MAX = 127


class TwinError(EdgeClappError):
    """The learner cannot be turned into an integer twin."""


def check_geometry(config: Config) -> None:
    """Refuses a config the integer twin (and its C kernels) cannot run."""
    problems = []
    if config.frontend.kind is not FrontendKind.LOGMEL:
        problems.append("its front end is not log-mel")
    if any(g != 1 for g in config.positions_per_frame()):
        problems.append("a layer has more than one position per frame")
    if config.rule.schedule is not Schedule.EITHER:
        problems.append("its schedule is not 'either'")
    if problems:
        raise TwinError(
            "the integer twin runs configs of the mcu kind (log-mel front end, stride-1 "
            "layers, the 'either' schedule), and this one differs: " + "; ".join(problems)
        )


class TwinLayer:
    """One layer's integer state and its frozen fixed-point constants."""

    def __init__(self, learner: OnlineLearner, index: int, block_frames: int) -> None:
        layer = learner.layers[index]
        config = learner.config
        self.kernel, self.stride = layer.kernel, layer.stride
        self.in_channels, self.channels = layer.in_channels, layer.channels
        self.carry_rows = layer.carry_rows
        K, F = config.rule.offsets, block_frames
        score_scale = config.score_scales()[index]
        lr = config.rule.lr
        slots = K * F

        # Weights and bias on the learner's grid (the same codes its forward pass uses).
        input_scale = learner.input_scale(index)
        w_codes, w_scales, b_codes, _ = layer.parameter_codes(input_scale)
        self.weight = w_codes.numpy().astype(np.int64)
        self.bias = b_codes.numpy().astype(np.int64)
        in_scale = float(input_scale)
        out_scale = float(layer.out_scale)
        w_scale = w_scales.double().numpy()  # (C,)
        self.scales = {"input": in_scale, "output": out_scale, "weight": w_scale}
        forward = [fixed_multiplier(in_scale * s / out_scale) for s in w_scale]
        self.fwd_m0 = np.array([m for m, _ in forward], dtype=np.int64)
        self.fwd_sh = np.array([s for _, s in forward], dtype=np.int64)

        # Prediction (and retrodiction) matrices: one scale for all of them.
        mats = [layer.pred] + ([layer.retro] if layer.retro is not None else [])
        peak = max(float(m.abs().max()) for m in mats)
        p_scale = max(peak, 1e-12) * PRED_HEADROOM / INT8_MAX
        self.p_scale = p_scale
        self.pred = np.round(layer.pred.double().numpy() / p_scale).astype(np.int64)
        self.retro = (
            np.round(layer.retro.double().numpy() / p_scale).astype(np.int64)
            if layer.retro is not None
            else None
        )
        margin = 1.0 / (score_scale * out_scale**2 * p_scale)
        self.threshold = np.full(K, math.ceil(margin), dtype=np.int64)

        # Update multipliers: code change per accumulator unit.
        common = lr * score_scale / slots
        self.mult = {
            "weight": [
                fixed_multiplier(common * p_scale * out_scale * in_scale / s, UPDATE_BITS)
                for s in w_scale
            ],
            "bias": [
                fixed_multiplier(common * p_scale * out_scale / (in_scale * s), UPDATE_BITS)
                for s in w_scale
            ],
            "pred": [fixed_multiplier(common * out_scale**2 / p_scale, UPDATE_BITS)],
        }

        # Streaming buffers, sized once: carry + block input, and the workspace of
        # K ring frames, F current, F negative (patches and output codes).
        patch = self.in_channels * self.kernel
        self.input = np.zeros((self.carry_rows + F, self.in_channels), dtype=np.int64)
        self.x_rows = np.zeros((K + 2 * F, patch), dtype=np.int64)
        self.z = np.zeros((K + 2 * F, self.channels), dtype=np.int64)

    def forward(self, x: np.ndarray, carry: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(F, C_in) input codes after ``carry`` (zeros when None) -> (patches, codes)."""
        if carry is None:
            carry = np.zeros((self.carry_rows, self.in_channels), dtype=np.int64)
        padded = np.concatenate([carry, x])
        return conv_forward(
            padded, self.weight, self.bias, self.kernel, self.stride, self.fwd_m0, self.fwd_sh
        )

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"weight": self.weight, "bias": self.bias, "pred": self.pred}
        if self.retro is not None:
            out["retro"] = self.retro
        return out

    def multipliers(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The update multipliers as (m0, sh) arrays: weight and bias one per output
        channel, pred one (for P and R), as ``clapp_update`` takes them."""
        return {
            name: (
                np.array([m for m, _ in pairs], dtype=np.int64),
                np.array([s for _, s in pairs], dtype=np.int64),
            )
            for name, pairs in self.mult.items()
        }


class IntegerLearner:
    """Learns from blocks of int8 front-end codes, (F, C_0) per block, in integers only."""

    def __init__(self, learner: OnlineLearner, seed: int = 0, shadow_bits: int = 0) -> None:
        """shadow_bits: 0 keeps weights, P and R in int8 alone; b > 0 keeps an integer
        shadow with b more bits below each code (int16 for b = 8) that the updates go
        to, and the codes the forward pass uses are the shadow rounded (half up)."""
        config = learner.config
        self._check(learner)
        if not 0 <= shadow_bits <= 16:
            raise TwinError(f"shadow_bits = {shadow_bits} must be in 0..16")
        self.shadow_bits = shadow_bits
        self.config = config
        self.K, self.F = config.rule.offsets, config.stream.block_frames
        self.input_scale = float(learner.input_observer.scale)
        self.layers = [TwinLayer(learner, i, self.F) for i in range(len(learner.layers))]
        self.shadows = [
            {name: a << shadow_bits for name, a in layer.arrays().items() if name != "bias"}
            for layer in self.layers
        ]
        capacity = config.stream.replay_capacity
        self.min_age = max(
            1, round(config.stream.replay_min_age_seconds / config.block_seconds)
        )
        self.pool = np.zeros((capacity, self.F, learner.frontend.channels), dtype=np.int64)
        self.pool_stamp = np.full(capacity, -1, dtype=np.int64)
        self.blocks = 0
        # The PRNG's position: each seed its own 2^32-long stream (the high half).
        self.counter = np.uint64(seed % 2**32) << np.uint64(32)
        self.ring_valid = False
        self.open_gates = [0 for _ in self.layers]
        # Host side, float: the front end that feeds the twin its codes.
        self.frontend = copy.deepcopy(learner.frontend)

    @staticmethod
    def _check(learner: OnlineLearner) -> None:
        check_geometry(learner.config)
        problems = []
        if not learner.config.quant.enabled or not learner.quant_active:
            problems.append("it was not learned with quantisation (or is in its warm-up)")
        if learner.counters.blocks_learned == 0:
            problems.append("it has learned no block, so it has no activation ranges")
        if problems:
            raise TwinError(
                "the integer twin starts from a run learned with `edge-clapp learn --quant`: "
                + "; ".join(problems)
            )

    # -- helpers --------------------------------------------------------------------

    def _draw(self, n: int) -> np.ndarray:
        """n uint32 draws of the counter hash; advances the counter."""
        out = counter_hash(self.counter + np.arange(n, dtype=np.uint64))
        self.counter += np.uint64(n)
        return out

    def _seed(self, n: int) -> int:
        """A counter range of n for a stochastic rounding; advances the counter."""
        start = int(self.counter)
        self.counter += np.uint64(n)
        return start

    def quantize_features(self, features: np.ndarray) -> np.ndarray:
        """Host side: float front-end output (T, C_0) -> int8 codes at the input scale,
        with the learner's rounding (half to even)."""
        x = torch.as_tensor(features, dtype=torch.float32)
        codes = quantize(x, torch.tensor(np.float32(self.input_scale)), (-128, 127))
        return codes.numpy().astype(np.int64)

    # -- one block ------------------------------------------------------------------

    def _pairs(self, have_negative: bool):
        K, F = self.K, self.F
        j = np.arange(F)
        offset = np.arange(1, K + 1)[:, None]
        future = np.broadcast_to(K + j, (K, F))
        context = K + j - offset
        valid = np.ones((K, F), dtype=bool)
        if not self.ring_valid:
            valid &= context >= K
        draws = self._draw(2 * K * F).reshape(2, K, F)
        positive = (draws[0] & 1) == 1
        replay = K + F + (draws[1] % F).astype(np.int64)
        candidate = np.where(positive, future, replay)
        label = np.where(positive, 1, -1)
        valid &= positive | have_negative
        return context, candidate, label, valid.astype(np.int64)

    def step(self, codes: np.ndarray) -> None:
        """Learn from one block of front-end codes (F, C_0), int8 range."""
        K, F = self.K, self.F
        codes = np.asarray(codes, dtype=np.int64)
        if codes.shape != (F, self.pool.shape[2]):
            raise ValueError(f"expected ({F}, {self.pool.shape[2]}) codes, got {codes.shape}")
        eligible = np.flatnonzero(
            (self.pool_stamp >= 0) & (self.blocks - self.pool_stamp >= self.min_age)
        )
        pick = int(self._draw(1)[0])
        negative = self.pool[eligible[pick % len(eligible)]] if len(eligible) else None
        context, candidate, label, valid = self._pairs(negative is not None)

        x, x_neg = codes, negative
        for i, layer in enumerate(self.layers):
            current = slice(K, K + F)
            carry = layer.input[: layer.carry_rows]
            layer.input[layer.carry_rows :] = x
            layer.x_rows[current], layer.z[current] = layer.forward(x, carry)
            if x_neg is not None:
                neg = slice(K + F, K + 2 * F)
                layer.x_rows[neg], layer.z[neg] = layer.forward(x_neg, None)
            acc = clapp_accumulate(
                layer.x_rows,
                layer.z,
                layer.pred,
                layer.retro,
                context,
                candidate,
                label,
                valid,
                layer.threshold,
            )
            self.open_gates[i] += acc["open_gates"]
            self._apply(layer, acc)
            next_x = layer.z[K : K + F].copy()
            next_neg = layer.z[K + F : K + 2 * F].copy() if x_neg is not None else None
            # Ring: the last K frames; carry: the input tail.
            layer.x_rows[:K] = layer.x_rows[F : F + K]
            layer.z[:K] = layer.z[F : F + K]
            if layer.carry_rows:
                layer.input[: layer.carry_rows] = layer.input[-layer.carry_rows :]
            x, x_neg = next_x, next_neg
        self.ring_valid = True
        # Reservoir sampling over every block so far, as the float learner's pool.
        seen, capacity = self.blocks, len(self.pool_stamp)
        slot = seen if seen < capacity else int(self._draw(1)[0]) % (seen + 1)
        if slot < capacity:
            self.pool[slot] = codes
            self.pool_stamp[slot] = self.blocks
        self.blocks += 1

    def _apply(self, layer: TwinLayer, acc: dict[str, np.ndarray]) -> None:
        b = self.shadow_bits
        arrays = layer.arrays()
        seeds = {name: self._seed(a.size) for name, a in arrays.items()}
        mult = layer.multipliers()
        if b == 0:
            for name, value in clapp_update(arrays, acc, mult, seeds).items():
                setattr(layer, name, value)
            return
        # Updates in shadow units: the multipliers x 2^b, the bounds x 2^b.
        shadow = self.shadows[self.layers.index(layer)]
        mult = {
            name: (m0, sh - (b if name != "bias" else 0)) for name, (m0, sh) in mult.items()
        }
        updated = clapp_update(
            {**arrays, **shadow}, acc, mult, seeds, INT8_MAX << b, INT8_MAX << b
        )
        layer.bias = updated.pop("bias")
        for name, value in updated.items():
            shadow[name] = value
            codes = (value + (1 << (b - 1))) >> b
            setattr(layer, name, np.clip(codes, -INT8_MAX, INT8_MAX))

    def step_samples(self, samples: np.ndarray) -> None:
        """Host front end (streaming, float) then ``step`` on its codes."""
        features = self.frontend.stream(torch.as_tensor(samples, dtype=torch.float32))
        self.step(self.quantize_features(features.numpy()))

    # -- inference ------------------------------------------------------------------

    def encode(self, samples: np.ndarray) -> list[torch.Tensor]:
        """Like ``OnlineLearner.encode``: a recording's frame vectors per layer, here the
        output codes times their scale (the host's front end, then integers only)."""
        hop = self.config.frontend.frame_hop
        samples = torch.as_tensor(samples, dtype=torch.float32)
        features = self.frontend.sequence(samples[: samples.numel() // hop * hop])
        codes = self.encode_codes(self.quantize_features(features.numpy()))
        return [
            torch.from_numpy(c * layer.scales["output"]).float()
            for c, layer in zip(codes, self.layers, strict=True)
        ]

    def encode_codes(self, codes: np.ndarray) -> list[np.ndarray]:
        """A whole recording's front-end codes (T, C_0) from zero state -> every layer's
        output codes (T, C_l)."""
        out, x = [], np.asarray(codes, dtype=np.int64)
        for layer in self.layers:
            _, x = layer.forward(x, None)
            out.append(x)
        return out
