"""Integer kernels of the device path, in numpy integer arrays only: the normative
reference. ``firmware_sim/c/ec_kernels.c`` implements them in C99 (the accumulate and
update steps fused into one kernel) and must match them bit for bit
(tests/test_firmware.py).

Number formats:
    codes     int8 (weights, first-layer input, prediction matrices) or uint8 (relu
              outputs), held in int64 arrays here; int32 biases
    acc       int64 accumulators (a Cortex-M's SMLAL accumulates 32 x 32 -> 64 bits)
    (m0, sh)  a positive real multiplier as m0 x 2^-sh, m0 an integer below 2^31

Rounding rules (documented, tested on hand-made cases):
    requantize        round half up: (acc * m0 + 2^(sh-1)) >> sh, then saturate
    stochastic_round  floor((acc * m0 + r) / 2^sh), r uniform in [0, 2^sh) from the
                      counter hash below: an unbiased rounding of acc * m0 / 2^sh
    multipliers       1 <= sh <= 62 and 0 <= m0 < 2^31 (forward) or < 2^22 (updates);
                      checked here, assumed by the C kernels
    >> is an arithmetic shift (floor); accumulators saturate to +-(2^31 - 1) before a
    forward requantization and to +-(2^40 - 1) before an update's, so that the product
    with m0 never leaves int64.
"""

from __future__ import annotations

import math

import numpy as np

INT32_MAX = 2**31 - 1
UPDATE_ACC_MAX = 2**40 - 1
FORWARD_BITS = 31  # m0 in [2^30, 2^31): forward requantization multipliers
UPDATE_BITS = 22  # m0 in [2^21, 2^22): update multipliers (acc up to 2^40: product < 2^62)
BIAS_LIMIT = 2**30  # biases saturate here, as on the quantisation grid (edge_clapp/quant.py)


def fixed_multiplier(real: float, bits: int = FORWARD_BITS) -> tuple[int, int]:
    """A positive real as (m0, sh) with m0 in [2^(bits-1), 2^bits) and real ~ m0 / 2^sh
    (relative error below 2^-(bits-1)). sh is at most 62; a real too small for that
    gives m0 = 0 (the update rounds to nothing but noise-free zero)."""
    if not (real > 0 and math.isfinite(real)):
        raise ValueError(f"a multiplier must be positive and finite, got {real!r}")
    mantissa, exponent = math.frexp(real)  # real = mantissa * 2^exponent, 0.5 <= m < 1
    m0 = round(mantissa * 2**bits)
    sh = bits - exponent
    if m0 == 2**bits:  # rounding reached the next power of two
        m0 //= 2
        sh -= 1
    if sh > 62:
        m0 >>= min(sh - 62, 63)
        sh = 62
    if sh < 1:
        raise ValueError(f"multiplier {real!r} is too large for the fixed-point format")
    return int(m0), int(sh)


def requantize(acc: np.ndarray, m0: np.ndarray, sh: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Round half up of acc * m0 / 2^sh, saturated to [lo, hi]. m0, sh broadcast
    (one per output channel, the last axis)."""
    acc = np.clip(acc.astype(np.int64), -INT32_MAX, INT32_MAX)
    m0, sh = check_multipliers(m0, sh, FORWARD_BITS)
    out = (acc * m0 + (np.int64(1) << (sh - 1))) >> sh
    return np.clip(out, lo, hi)


def check_multipliers(m0, sh, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """m0, sh as int64 arrays, refused outside 0 <= m0 < 2^bits, 1 <= sh <= 62."""
    m0 = np.asarray(m0, dtype=np.int64)
    sh = np.asarray(sh, dtype=np.int64)
    if m0.size and (m0.min() < 0 or m0.max() >= 2**bits):
        raise ValueError(f"multiplier m0 outside [0, 2^{bits})")
    if sh.size and (sh.min() < 1 or sh.max() > 62):
        raise ValueError("shift sh outside [1, 62]")
    return m0, sh


def hash32(counter: np.ndarray) -> np.ndarray:
    """32-bit hash: the counter times 0x9E3779B9 (mod 2^32), then murmur3's 32-bit
    finaliser (uint32 in, uint32 out; 0 maps to 0)."""
    shape = np.shape(counter)
    x = (np.atleast_1d(np.asarray(counter, dtype=np.uint64)) & 0xFFFFFFFF).astype(np.uint32)
    x = (x * np.uint32(0x9E3779B9)).astype(np.uint32)
    x ^= x >> np.uint32(16)
    x = (x * np.uint32(0x85EBCA6B)).astype(np.uint32)
    x ^= x >> np.uint32(13)
    x = (x * np.uint32(0xC2B2AE35)).astype(np.uint32)
    x ^= x >> np.uint32(16)
    return x.reshape(shape)


def counter_hash(counter: np.ndarray) -> np.ndarray:
    """The PRNG: a 64-bit counter -> uint32, hash32(low ^ hash32(high)). Counter-based,
    so element i of any tensor has its own draw and C computes the same; below 2^32 it is
    hash32 itself (hash32(0) = 0), and a seed in the high half gives its own stream."""
    c = np.asarray(counter, dtype=np.uint64)
    high = (c >> np.uint64(32)).astype(np.uint32)
    low = (c & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return hash32(low ^ hash32(high))


def stochastic_round(acc: np.ndarray, m0: np.ndarray, sh: np.ndarray, seed: int) -> np.ndarray:
    """floor((acc * m0 + r) / 2^sh), r uniform in [0, 2^sh) drawn by counter_hash(seed +
    i) for element i (row-major). For sh > 32 the product is first floored by 2^(sh-32)
    and r has 32 bits. acc saturates to +-UPDATE_ACC_MAX; m0 below 2^22. m0 and sh are
    one value, or one per row of acc (shape (rows, 1, ...)), as the C kernel takes them."""
    acc = np.clip(np.asarray(acc).astype(np.int64), -UPDATE_ACC_MAX, UPDATE_ACC_MAX)
    m0, sh = check_multipliers(m0, sh, UPDATE_BITS)
    per_row = (acc.shape[0],) + (1,) * (acc.ndim - 1)
    for a in (m0, sh):
        if a.size != 1 and a.shape != per_row:
            raise ValueError(f"m0 and sh must be one value or shaped {per_row}")
    m0 = np.broadcast_to(m0.reshape(-1, *per_row[1:]) if m0.size != 1 else m0, acc.shape)
    sh = np.broadcast_to(sh.reshape(-1, *per_row[1:]) if sh.size != 1 else sh, acc.shape)
    index = np.arange(acc.size, dtype=np.uint64).reshape(acc.shape)
    r = counter_hash(np.uint64(seed) + index).astype(np.int64)
    product = acc * m0
    pre = np.maximum(sh - 32, 0)
    product = product >> pre
    bits = sh - pre  # <= 32
    r = r & ((np.int64(1) << bits) - 1)
    return (product + r) >> bits


def conv_forward(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    kernel: int,
    stride: int,
    m0: np.ndarray,
    sh: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Input codes with their carry in front (T_in, C_in) -> (patches (T_out, C_in *
    kernel), relu output codes (T_out, C) uint8 range). Weight codes (C, C_in * kernel),
    channel-major patches; bias int32 at input scale x weight scale; (m0, sh) per output
    channel for input scale x weight scale / output scale."""
    x = np.asarray(x, dtype=np.int64)
    t_out = (x.shape[0] - kernel) // stride + 1
    idx = np.arange(t_out)[:, None] * stride + np.arange(kernel)[None, :]  # (T_out, k)
    patches = x[idx].transpose(0, 2, 1).reshape(t_out, -1)  # (T_out, C_in * k)
    acc = patches @ weight.astype(np.int64).T + bias.astype(np.int64)
    return patches, requantize(acc, m0, sh, 0, 255)


def clapp_accumulate(
    x_rows: np.ndarray,
    z: np.ndarray,
    pred: np.ndarray,
    retro: np.ndarray | None,
    context: np.ndarray,
    candidate: np.ndarray,
    label: np.ndarray,
    valid: np.ndarray,
    threshold: np.ndarray,
) -> dict[str, np.ndarray]:
    """The CLAPP rule's accumulators for one layer with one position per frame, in
    integer units (see rule.py for the float form and firmware_sim/README):

    x_rows (N, D) input patch codes; z (N, C) output codes; pred, retro (K, C, C) codes;
    context, candidate (K, M) frame indices; label (K, M) +1 / -1; valid (K, M) 0 / 1;
    threshold (K,): the margin in score units, ceil(1 / (score_scale x z_scale^2 x
    P_scale)): y u < 1 in real units is y S < threshold for the integer score S.

    Returns int64 accumulators: weight (C, D), bias (C,), pred (K, C, C), retro (K, C, C)
    or None, and the count of open gates. The caller scales them by the learning rate
    and 1 / (pairs in use) and rounds them stochastically."""
    z = z.astype(np.int64)
    ctx, cand = z[context], z[candidate]  # (K, M, C)
    dendrite = np.einsum("kmj,kij->kmi", ctx, pred.astype(np.int64))  # P_k c
    score = (cand * dendrite).sum(-1)  # (K, M)
    y = label.astype(np.int64)
    gate = (y * score < threshold[:, None]).astype(np.int64)
    third = y * gate * valid.astype(np.int64)
    d_pred = np.einsum("km,kmi,kmj->kij", third, cand, ctx)
    err = np.zeros(z.shape, dtype=np.int64)
    np.add.at(err, candidate.ravel(), (third[..., None] * dendrite).reshape(-1, z.shape[1]))
    d_retro = None
    open_gates = int((gate * valid).sum())
    if retro is None:
        back = np.einsum("kmi,kij->kmj", cand, pred.astype(np.int64))  # P_k^T z'
        np.add.at(err, context.ravel(), (third[..., None] * back).reshape(-1, z.shape[1]))
    else:
        back = np.einsum("kmj,kij->kmi", cand, retro.astype(np.int64))  # R_k z'
        score_r = (ctx * back).sum(-1)
        gate_r = (y * score_r < threshold[:, None]).astype(np.int64)
        third_r = y * gate_r * valid.astype(np.int64)
        d_retro = np.einsum("km,kmi,kmj->kij", third_r, ctx, cand)
        np.add.at(err, context.ravel(), (third_r[..., None] * back).reshape(-1, z.shape[1]))
        open_gates += int((gate_r * valid).sum())
    err *= z > 0  # relu'
    return {
        "weight": err.T @ x_rows.astype(np.int64),
        "bias": err.sum(0),
        "pred": d_pred,
        "retro": d_retro,
        "open_gates": open_gates,
        "score": score,
    }


def clapp_update(
    arrays: dict[str, np.ndarray],
    acc: dict[str, np.ndarray],
    mult: dict[str, tuple[np.ndarray, np.ndarray]],
    seeds: dict[str, int],
    weight_bound: int = 127,
    pred_bound: int = 127,
) -> dict[str, np.ndarray]:
    """Applies a layer's accumulators: each stochastically rounded with its multipliers
    (weight and bias: one per output channel, row r of the weight; pred / retro: one) and
    its own counter range, then added with saturation (weights and P / R codes to
    +-weight_bound and +-pred_bound, bias to +-BIAS_LIMIT). Returns the new arrays."""
    out = {}
    for name, bound in (
        ("weight", weight_bound),
        ("bias", None),
        ("pred", pred_bound),
        ("retro", pred_bound),
    ):
        if arrays.get(name) is None:
            continue
        m0, sh = mult["pred" if name == "retro" else name]
        m0, sh = np.asarray(m0), np.asarray(sh)
        if name == "weight":
            m0, sh = m0[:, None], sh[:, None]
        delta = stochastic_round(acc[name], m0, sh, seeds[name])
        lo, hi = (-bound, bound) if bound is not None else (-BIAS_LIMIT, BIAS_LIMIT)
        out[name] = np.clip(arrays[name] + delta, lo, hi)
    return out
