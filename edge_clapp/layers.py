"""A CLAPP layer (Conv1d or Linear, average-pooled into frames) and its fixed buffers.

Shape legend (time-major, one row per position):
    T_in  input positions in a block       C_in  input channels
    F     frames in a block                g     output positions per frame
    K     prediction offsets                D     C_in * kernel, one input patch
    C     output channels

A linear layer is a conv with kernel 1, stride 1 over one position per frame.

The layer's workspace holds ``K + 2F`` frames of patches and outputs: rows for the ring
of the last K frames of the previous block (contexts whose futures fall in this block),
then the current block's F frames, then the F frames of a replayed negative block. All of
it, and the carry of input positions the kernel still needs, is allocated here, once.
"""

from __future__ import annotations

import math

import torch

from edge_clapp.config import LayerConfig, LayerKind, QuantConfig, RuleConfig, Variant
from edge_clapp.quant import (
    BIAS,
    UINT8,
    RangeObserver,
    fake_quant_,
    weight_bound,
    weight_scales,
)


def patches(padded: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Input positions (T, C_in) -> patches (T_out, C_in * kernel), channel-major like the
    flattened weight (C, C_in, kernel). T_out = (T - kernel) // stride + 1."""
    windows = padded.unfold(0, kernel, stride)  # (T_out, C_in, kernel)
    return windows.reshape(windows.shape[0], -1)


def init_parameters(
    config: LayerConfig, in_channels: int, rule: RuleConfig, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """A layer's initial parameters, drawn from ``generator`` in a fixed order.

    He-normal weights (relu keeps the activation scale from layer to layer, so deep layers
    do not start with vanishing scores), zero bias; prediction matrices small so the first
    scores sit well inside the margin; ``retro`` only for CLAPP."""
    taps = config.kernel**2 if config.kind is LayerKind.CONV2D else config.kernel
    patch, channels = in_channels * taps, config.channels
    out = {
        "weight": torch.randn(channels, patch, generator=generator) * math.sqrt(2.0 / patch),
        "bias": torch.zeros(channels),
    }
    std = rule.pred_init_std / math.sqrt(channels)
    out["pred"] = torch.randn(rule.offsets, channels, channels, generator=generator) * std
    if rule.variant is Variant.CLAPP:
        out["retro"] = torch.randn(rule.offsets, channels, channels, generator=generator) * std
    return out


class LayerParameters:
    """What every CLAPP layer learns: forward weight and bias, the prediction matrices,
    and for CLAPP the retrodiction matrices; ``pool`` says how its positions become a
    frame's vector."""

    weight: torch.Tensor
    bias: torch.Tensor
    pred: torch.Tensor
    retro: torch.Tensor | None
    pool: str = "avg"

    def parameters(self) -> dict[str, torch.Tensor]:
        params = {"weight": self.weight, "bias": self.bias, "pred": self.pred}
        if self.retro is not None:
            params["retro"] = self.retro
        return params


class ClappLayer(LayerParameters):
    def __init__(
        self,
        config: LayerConfig,
        in_channels: int,
        g: int,
        rule: RuleConfig,
        block_frames: int,
        generator: torch.Generator,
        quant: QuantConfig | None = None,
    ) -> None:
        self.config = config
        self.in_channels = in_channels
        self.channels = config.channels
        self.kernel = config.kernel
        self.stride = config.stride
        self.g = g
        self.offsets = rule.offsets
        self.block_frames = block_frames
        patch = in_channels * config.kernel
        channels = config.channels

        init = init_parameters(config, in_channels, rule, generator)
        self.weight, self.bias, self.pred = init["weight"], init["bias"], init["pred"]
        self.retro = init.get("retro")

        # Streaming buffers.
        K, F = rule.offsets, block_frames
        carry = config.kernel - config.stride
        t_in = F * g * config.stride
        self.carry_rows = carry
        self.input = torch.zeros(carry + t_in, in_channels)  # carry + this block's input
        self.neg_input = torch.zeros(carry + t_in, in_channels)  # zero carry: fresh start
        self.x_rows = torch.zeros((K + 2 * F) * g, patch)
        self.z_rows = torch.zeros((K + 2 * F) * g, channels)

        # Quantisation-aware learning: the grid's weights and bias (from the float ones
        # before each block), the output's range observer. ``quant_active`` is set by the
        # learner (off during the warm-up); the layer's input arrives already on the grid.
        self.quant = quant if quant is not None and quant.enabled else None
        self.quant_active = False
        if self.quant is not None:
            self.weight_q = torch.zeros_like(self.weight)
            self.bias_q = torch.zeros_like(self.bias)
            self.out_observer = RangeObserver(self.quant, signed=False)

    # -- bookkeeping --------------------------------------------------------------------

    def buffers(self) -> dict[str, torch.Tensor]:
        out = {
            "input": self.input,
            "neg_input": self.neg_input,
            "x_rows": self.x_rows,
            "z_rows": self.z_rows,
        }
        if self.quant is not None:
            out["out_range"] = self.out_observer.range
        return out

    def derived(self) -> dict[str, torch.Tensor]:
        """Buffers recomputed from the state before every block (the grid's weights):
        counted in the learner's memory, not saved in checkpoints."""
        if self.quant is None:
            return {}
        return {"weight_q": self.weight_q, "bias_q": self.bias_q}

    # -- quantisation -------------------------------------------------------------------

    def weight_scales(self) -> torch.Tensor:
        """(C,) per-output-channel scales of the current float weights."""
        return weight_scales(self.weight, self.quant.weight_bits)

    def parameter_codes(
        self, input_scale: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The float weight and bias as codes (float32 holding integers): (weight codes
        (C, D), weight scales (C,), bias codes (C,), bias scales (C,)); int8 per output
        channel, int32 bias at input_scale x weight scale. The one definition of the grid
        that the learner, the int8 export and the integer twin share."""
        bound = weight_bound(self.quant.weight_bits)
        w_scales = self.weight_scales()
        w_codes = torch.round(self.weight / w_scales[:, None]).clamp_(-bound, bound)
        b_scales = input_scale * w_scales
        b_codes = torch.round(self.bias / b_scales).clamp_(*BIAS)
        return w_codes, w_scales, b_codes, b_scales

    def quantize_parameters(
        self, input_scale: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The float weight and bias on their grids: codes times their scales. Written
        into ``out`` (default: the layer's weight_q, bias_q, which the next block uses)."""
        weight_q, bias_q = out if out is not None else (self.weight_q, self.bias_q)
        w_codes, w_scales, b_codes, b_scales = self.parameter_codes(input_scale)
        torch.mul(w_codes, w_scales[:, None], out=weight_q)
        torch.mul(b_codes, b_scales, out=bias_q)
        # Weights grown past float32's range (a runaway learning rate) make inf x 0: keep
        # the grid finite; the learner already counts and contains the overflow.
        weight_q.nan_to_num_(nan=0.0)
        bias_q.nan_to_num_(nan=0.0)
        return weight_q, bias_q

    @property
    def out_scale(self) -> torch.Tensor:
        return self.out_observer.scale

    def frame_rows(self, first: int, count: int) -> slice:
        """Workspace rows of frames [first, first + count)."""
        return slice(first * self.g, (first + count) * self.g)

    # -- forward ------------------------------------------------------------------------

    def _patches(self, padded: torch.Tensor, out: torch.Tensor) -> None:
        """Input positions (carry + T_in, C_in) -> patches (T_out, C_in * kernel)."""
        windows = padded.unfold(0, self.kernel, self.stride)  # (T_out, C_in, kernel)
        out.view(-1, self.in_channels, self.kernel).copy_(windows)

    def _params(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.quant_active:
            return self.weight_q, self.bias_q
        return self.weight, self.bias

    def _forward_rows(self, rows: slice, observe: bool) -> torch.Tensor:
        x, z = self.x_rows[rows], self.z_rows[rows]
        weight, bias = self._params()
        torch.addmm(bias, x, weight.t(), out=z)
        z.relu_()
        if self.quant is not None:
            if observe:
                self.out_observer.observe(z)
            if self.quant_active:
                fake_quant_(z, self.out_scale, UINT8)
        return z

    def forward_block(self, x: torch.Tensor, observe: bool = True) -> torch.Tensor:
        """Current block (F*g*stride, C_in) -> relu outputs (F*g, C), a view of z_rows.
        ``observe``: update the output's range observer (off for silent blocks)."""
        self.input[self.carry_rows :].copy_(x)
        rows = self.frame_rows(self.offsets, self.block_frames)
        self._patches(self.input, self.x_rows[rows])
        return self._forward_rows(rows, observe=observe)

    def forward_negative(self, x: torch.Tensor) -> torch.Tensor:
        """Replayed block, zero carry -> relu outputs (F*g, C), a view of z_rows."""
        self.neg_input[self.carry_rows :].copy_(x)
        rows = self.frame_rows(self.offsets + self.block_frames, self.block_frames)
        self._patches(self.neg_input, self.x_rows[rows])
        return self._forward_rows(rows, observe=False)

    def commit_block(self) -> None:
        """Keep the last K frames as the ring and the input tail as the next carry."""
        K, F = self.offsets, self.block_frames
        self.x_rows[self.frame_rows(0, K)] = self.x_rows[self.frame_rows(F, K)]
        self.z_rows[self.frame_rows(0, K)] = self.z_rows[self.frame_rows(F, K)]
        if self.carry_rows:
            self.input[: self.carry_rows] = self.input[-self.carry_rows :]

    def forward_sequence(
        self, x: torch.Tensor, params: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Whole sequence with a zero carry, as a stream would start: (T_in, C_in) ->
        relu outputs (T_in / stride, C). T_in must be a multiple of the stride."""
        padded = torch.cat([x.new_zeros(self.carry_rows, self.in_channels), x])
        rows = patches(padded, self.kernel, self.stride)  # (T_out, D)
        weight, bias = params if params is not None else self._params()
        z = torch.addmm(bias, rows, weight.t()).relu_()
        return fake_quant_(z, self.out_scale, UINT8) if self.quant_active else z
