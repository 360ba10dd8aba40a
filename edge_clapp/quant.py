"""Fake quantisation: floats on an integer grid, as the int8 graph and a device hold them.

Conventions (shared with ``export/model.py``, which writes them as QDQ nodes):

- weights: int8, symmetric per output channel, zero point 0, codes in
  ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` for ``weight_bits`` b; scale = max |w_c| / that bound.
- bias: int32 at scale ``input_scale * weight_scale_c``, zero point 0, saturating at
  +-BIAS_LIMIT = 2^30: exact in float32, and it leaves 2^30 of int32 headroom for the
  accumulation (|sum x w| <= D x 255 x 127 < 2^30 for patches of D < 33,000), so an
  integer kernel cannot overflow where the float reference does not.
- activations: into the first layer int8 ``[-128, 127]``, after a relu uint8 ``[0, 255]``,
  zero point 0, scale = observed range / 127 (signed) or / 255 (unsigned); a range
  never seen above 0 counts as 1.0 (its codes are all 0 at any scale, and the bias of
  the layer it feeds keeps a usable int32 range).
- code = clamp(round_half_even(x / scale)), in float32, as ONNX QuantizeLinear does.

Reference: ONNX QuantizeLinear / DequantizeLinear semantics (tests/test_quant.py checks
these functions against onnx's reference evaluator exactly).
"""

from __future__ import annotations

import torch

from edge_clapp.config import Observer, QuantConfig

INT8 = (-128, 127)
UINT8 = (0, 255)
BIAS_LIMIT = 2**30
BIAS = (-BIAS_LIMIT, BIAS_LIMIT)


def quantize(x: torch.Tensor, scale: torch.Tensor, bounds: tuple[int, int]) -> torch.Tensor:
    """Integer codes (as floats) of ``x``: clamp(round(x / scale), lo, hi)."""
    return torch.round(x / scale).clamp_(*bounds)


def fake_quant(x: torch.Tensor, scale: torch.Tensor, bounds: tuple[int, int]) -> torch.Tensor:
    """``x`` moved onto the grid: quantize, then multiply back by the scale."""
    return quantize(x, scale, bounds).mul_(scale)


def fake_quant_(x: torch.Tensor, scale: torch.Tensor, bounds: tuple[int, int]) -> torch.Tensor:
    """In place: ``x`` moved onto the grid."""
    return x.div_(scale).round_().clamp_(*bounds).mul_(scale)


def weight_bound(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def weight_scales(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per output channel (row of a (C, D) weight): max |w| / bound; 1.0 for a zero row."""
    peak = weight.abs().amax(dim=1)
    return torch.where(peak > 0, peak / weight_bound(bits), torch.ones_like(peak))


def activation_scale(value_range: torch.Tensor, signed: bool) -> torch.Tensor:
    usable = torch.where(value_range > 0, value_range, torch.ones_like(value_range))
    return usable / (127.0 if signed else 255.0)


class RangeObserver:
    """Tracks the range (largest magnitude kept) of one activation tensor over blocks.

    ``minmax``: the block's max |x|; ``percentile``: that percentile of |x| (values above
    it clip at the top code). Smoothed as ``r <- m r + (1 - m) new``; the first block
    sets ``r`` directly. ``range`` is a 0-d tensor of the learner's state."""

    def __init__(self, config: QuantConfig, signed: bool) -> None:
        self.config = config
        self.signed = signed
        self.range = torch.zeros(())

    def observe(self, x: torch.Tensor) -> None:
        magnitude = x.abs().flatten()
        if self.config.observer is Observer.PERCENTILE and magnitude.numel() > 1:
            k = max(1, round(self.config.percentile / 100 * magnitude.numel()))
            new = magnitude.kthvalue(k).values
        else:
            new = magnitude.max()
        if not bool(torch.isfinite(new)):
            return  # an overflowed block says nothing about the range
        if float(self.range) == 0.0:
            self.range.copy_(new)
        else:
            self.range.mul_(self.config.momentum).add_(new, alpha=1 - self.config.momentum)

    @property
    def scale(self) -> torch.Tensor:
        return activation_scale(self.range, self.signed)

    @property
    def bounds(self) -> tuple[int, int]:
        return INT8 if self.signed else UINT8
