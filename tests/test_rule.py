"""The rule proof: explicit updates equal minus the autograd gradient of the layer's loss.

Reference: torch autograd in float64 through ``torch.nn.functional.conv1d`` / ``linear``
/ ``conv2d`` and ``avg_pool1d`` / ``adaptive_avg_pool2d`` / ``adaptive_max_pool2d``
(independent of the learner's unfold-and-matmul forward and of its pooling code).
Tolerance: relative error below 1e-9 for every parameter.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edge_clapp.layers import patches
from edge_clapp.rule import Pairs, clapp_step, pool_frames
from edge_clapp.vision import window_rows
from tests.helpers import relative_error

TOL = 1e-9

# (kind, C_in, C, kernel, stride, g): a strided conv pooling several positions per frame,
# a conv with one position per frame, and a linear layer.
GEOMETRIES = [
    ("conv1d", 3, 6, 4, 2, 3),
    ("conv1d", 5, 4, 3, 1, 1),
    ("linear", 7, 5, 1, 1, 1),
]


def _sections(kind, c_in, kernel, stride, g, frames, gen):
    """Random padded inputs for ring, current and negative sections: [(T, C_in)]."""
    carry = kernel - stride
    return [
        torch.randn(carry + n * g * stride, c_in, generator=gen, dtype=torch.float64)
        for n in frames
    ]


def _reference_frames(kind, inputs, weight, bias, kernel, stride, g):
    """Autograd forward: per section conv/linear, relu, average pool -> (N, C)."""
    out = []
    for x in inputs:
        if kind == "linear":
            z = F.linear(x, weight, bias).relu()  # (T, C), one position per frame
            out.append(z)
        else:
            w3 = weight.view(weight.shape[0], -1, kernel)  # (C, C_in, kernel)
            z = F.conv1d(x.t()[None], w3, bias, stride=stride).relu()  # (1, C, T_out)
            out.append(F.avg_pool1d(z, g)[0].t())  # (frames, C)
    return torch.cat(out)


def _pairs(K, M, n_frames, gen):
    context = torch.randint(0, n_frames, (K, M), generator=gen)
    shift = torch.randint(1, n_frames, (K, M), generator=gen)
    candidate = (context + shift) % n_frames  # never the context itself
    label = torch.where(torch.rand(K, M, generator=gen) < 0.5, 1.0, -1.0).double()
    weight = torch.rand(K, M, generator=gen, dtype=torch.float64)
    weight[torch.rand(K, M, generator=gen) < 0.2] = 0.0  # unused slots
    return Pairs(context=context, candidate=candidate, label=label, weight=weight)


@pytest.mark.parametrize("variant", ["clapp", "clapp-s"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[g[0] + str(g[4]) for g in GEOMETRIES])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("s", [1.0, 0.3])
def test_explicit_update_equals_minus_gradient(variant, geometry, seed, s):
    """s: the layer's score scale, u = s z'^T P c."""
    kind, c_in, channels, kernel, stride, g = geometry
    gen = torch.Generator().manual_seed(seed)
    K, ring, current, negative = 3, 3, 6, 6

    weight = torch.randn(channels, c_in * kernel, generator=gen, dtype=torch.float64) * 0.7
    bias = torch.randn(channels, generator=gen, dtype=torch.float64) * 0.3
    pred = torch.randn(K, channels, channels, generator=gen, dtype=torch.float64) * 1.5
    retro = (
        torch.randn(K, channels, channels, generator=gen, dtype=torch.float64) * 1.5
        if variant == "clapp"
        else None
    )
    inputs = _sections(kind, c_in, kernel, stride, g, (ring, current, negative), gen)
    n_frames = ring + current + negative
    pairs = _pairs(K, 24, n_frames, gen)

    # Explicit: rows from layers.patches (the whole-sequence path; test_learner checks the
    # streaming path gives the same frames).
    x_rows = torch.cat([patches(x, kernel, stride) for x in inputs])  # (N*g, D)
    z_rows = torch.addmm(bias, x_rows, weight.t()).relu()  # (N*g, C)

    _spread_scores(pool_frames(z_rows, g), pairs, pred, retro, s)
    step = clapp_step(x_rows, z_rows, g, pred, retro, pairs, s)

    # Autograd: the same loss built from the published two-hinge form.
    params = {"weight": weight, "bias": bias, "pred": pred}
    if retro is not None:
        params["retro"] = retro
    params = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    zhat = _reference_frames(
        kind, inputs, params["weight"], params["bias"], kernel, stride, g
    )  # (N, C)
    _assert_step_is_minus_gradient(step, zhat, params, pairs, s)


def _assert_step_is_minus_gradient(step, zhat, params, pairs, s, lr=0.05):
    """``zhat``: the reference's pooled frames (N, C), a function of ``params``."""
    retro = params.get("retro")
    ctx, cand = zhat[pairs.context], zhat[pairs.candidate]  # (K, M, C)
    y, w = pairs.label, pairs.weight
    if retro is None:
        score = s * torch.einsum("kmc,kcd,kmd->km", cand, params["pred"], ctx)
        loss = (w * torch.relu(1 - y * score)).sum()
    else:
        score = s * torch.einsum("kmc,kcd,kmd->km", cand, params["pred"], ctx.detach())
        score_r = s * torch.einsum("kmc,kcd,kmd->km", ctx, params["retro"], cand.detach())
        loss = (w * torch.relu(1 - y * score)).sum() + (w * torch.relu(1 - y * score_r)).sum()
    loss.backward()

    # The test is only meaningful if both gate states occur for both labels, in both
    # hinges of CLAPP.
    used = w > 0
    scores = {"P": score} if retro is None else {"P": score, "R": score_r}
    for name, u in scores.items():
        for label in (1.0, -1.0):
            inside = (y * u < 1) & used & (y == label)
            outside = (y * u >= 1) & used & (y == label)
            assert inside.any() and outside.any(), (
                f"{name} hinge, label {label}: gate states not both covered"
            )

    assert abs(float(step.loss) - loss.item()) <= TOL * abs(loss.item())
    explicit = {"weight": step.weight, "bias": step.bias, "pred": step.pred}
    if retro is not None:
        explicit["retro"] = step.retro
    else:
        assert step.retro is None
    for name, delta in explicit.items():
        reference = -lr * params[name].grad
        assert reference.abs().max() > 0, f"{name}: gradient is zero, test is vacuous"
        err = relative_error(lr * delta, reference)
        assert err < TOL, f"{name}: relative error {err:.3e} >= {TOL}"


def _spread_scores(zhat, pairs, pred, retro, s):
    """Scale P and R so that scores spread around the margin: both gate states occur."""
    for m in (pred, retro):
        if m is not None:
            s0 = torch.einsum("kmc,kcd,kmd->km", zhat[pairs.candidate], m, zhat[pairs.context])
            m *= 2.0 / (s * s0.std())


# (C_in, C, kernel, stride, patch side): 3x3 "same" conv keeping the map, a strided one,
# a 5x5 kernel over an odd side, and a 1x1 kernel.
CONV2D_GEOMETRIES = [(2, 5, 3, 1, 4), (3, 4, 3, 2, 5), (1, 6, 5, 2, 6), (4, 3, 1, 1, 3)]


@pytest.mark.parametrize("variant", ["clapp", "clapp-s"])
@pytest.mark.parametrize("pool", ["avg", "max"])
@pytest.mark.parametrize("geometry", CONV2D_GEOMETRIES, ids=lambda g: "k{2}s{3}p{4}".format(*g))
@pytest.mark.parametrize("s", [1.0, 0.3])
def test_conv2d_update_equals_minus_gradient(variant, pool, geometry, s):
    """Conv2d patch layers, average and max pooling: explicit update vs autograd through
    F.conv2d and adaptive_{avg,max}_pool2d on the patch maps."""
    c_in, channels, kernel, stride, side = geometry
    # Seed and 48 pairs per offset chosen so that every case covers both gate states for
    # both labels in both hinges (checked above; with 24 pairs, k5s2p6 did not).
    gen = torch.Generator().manual_seed(7)
    K, n_patches = 3, 20
    weight = torch.randn(channels, c_in * kernel**2, generator=gen, dtype=torch.float64) * 0.7
    bias = torch.randn(channels, generator=gen, dtype=torch.float64) * 0.3
    pred = torch.randn(K, channels, channels, generator=gen, dtype=torch.float64)
    retro = (
        torch.randn(K, channels, channels, generator=gen, dtype=torch.float64)
        if variant == "clapp"
        else None
    )
    maps = torch.randn(n_patches, c_in, side, side, generator=gen, dtype=torch.float64)
    pairs = _pairs(K, 48, n_patches, gen)

    x_rows = window_rows(maps, kernel, stride)  # the learner's im2col
    z_rows = torch.addmm(bias, x_rows, weight.t()).relu()
    g = z_rows.shape[0] // n_patches
    _spread_scores(pool_frames(z_rows, g, pool), pairs, pred, retro, s)
    step = clapp_step(x_rows, z_rows, g, pred, retro, pairs, s, pool=pool)

    params = {"weight": weight, "bias": bias, "pred": pred}
    if retro is not None:
        params["retro"] = retro
    params = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    w4 = params["weight"].view(channels, c_in, kernel, kernel)
    out = F.conv2d(maps, w4, params["bias"], stride=stride, padding=kernel // 2).relu()
    assert out.shape[-1] ** 2 == g
    reduce = F.adaptive_avg_pool2d if pool == "avg" else F.adaptive_max_pool2d
    zhat = reduce(out, 1).flatten(1)  # (patches, C)
    if pool == "max":  # the max must route: some channels' maxima sit off the first position
        assert (out.flatten(2).argmax(2) > 0).any()
    _assert_step_is_minus_gradient(step, zhat, params, pairs, s)


def test_rule_records_no_autograd_graph():
    gen = torch.Generator().manual_seed(3)
    x_rows = torch.randn(12, 4, generator=gen, requires_grad=True)
    z_rows = torch.randn(12, 3, generator=gen).relu().requires_grad_(True)
    pred = torch.randn(2, 3, 3, generator=gen, requires_grad=True)
    pairs = Pairs(
        context=torch.tensor([[0, 1], [2, 3]]),
        candidate=torch.tensor([[1, 2], [3, 4]]),
        label=torch.tensor([[1.0, -1.0], [1.0, -1.0]]),
        weight=torch.full((2, 2), 0.25),
    )
    step = clapp_step(x_rows, z_rows, 2, pred, None, pairs)
    for t in (step.weight, step.bias, step.pred, step.loss):
        assert not t.requires_grad and t.grad_fn is None
