"""The CLAPP rule for one layer, written out as explicit tensor updates.

Shape legend:
    N   frames in the layer's workspace (ring + current block + replayed negatives); for
        images, patches (current frame + replayed frames)
    g   positions per frame (pooled into the frame vector by their mean or maximum)
    D   input features per position (C_in * kernel; conv2d: C_in * kernel^2)
    C   output channels
    K   prediction offsets (1..K frames ahead)
    M   pairs per offset

Reference: the rule is correct when every update returned here equals minus the autograd
gradient of the loss below, in float64 (tests/test_rule.py). For one (context c, candidate
z', label y) pair at offset k the loss is

    CLAPP-s:  max(0, 1 - y s z'^T P_k c)
    CLAPP:    max(0, 1 - y s z'^T P_k sg(c)) + max(0, 1 - y s c^T R_k sg(z'))   (sg:
              detached in the first term the context, in the second the candidate)

with ``s`` the layer's score scale (1 unless configured)
weighted by ``Pairs.weight`` and summed. Nothing here records an autograd graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Pairs:
    """K x M (context, candidate) pairs; indices point at frames of the workspace."""

    context: torch.Tensor  # (K, M) int64
    candidate: torch.Tensor  # (K, M) int64
    label: torch.Tensor  # (K, M) +1 (true future) or -1 (negative)
    weight: torch.Tensor  # (K, M) >= 0; 0 marks an unused slot

    @classmethod
    def weighted(
        cls,
        context: torch.Tensor,
        candidate: torch.Tensor,
        label: torch.Tensor,
        valid: torch.Tensor,
    ) -> Pairs:
        """Pairs whose slots in use (``valid``) share the weight equally: 1 / (pairs in
        use), so a block's loss is the mean over its pairs; 0 for the others."""
        weight = valid.to(torch.float32)
        weight /= weight.sum().clamp(min=1.0)
        return cls(context=context, candidate=candidate, label=label, weight=weight)


@dataclass
class RuleStep:
    """Updates to add (already signed: descent direction, before the learning rate)."""

    weight: torch.Tensor  # (C, D)
    bias: torch.Tensor  # (C,)
    pred: torch.Tensor  # (K, C, C)
    retro: torch.Tensor | None  # (K, C, C) for CLAPP, None for CLAPP-s
    loss: torch.Tensor  # scalar: weighted hinge loss (both terms for CLAPP)
    pos_score: torch.Tensor  # scalar: sum of u over positive pairs in use
    pos_count: torch.Tensor
    neg_score: torch.Tensor  # scalar: sum of u over negative pairs in use
    neg_count: torch.Tensor
    gate_open: torch.Tensor  # scalar: pairs in use whose hinge gate is open


def pool_frames(z_rows: torch.Tensor, g: int, pool: str = "avg") -> torch.Tensor:
    """Pool ``g`` consecutive positions into one frame vector: (N*g, C) -> (N, C), by
    their mean (``avg``) or per channel their maximum (``max``)."""
    n_rows, channels = z_rows.shape
    grouped = z_rows.view(n_rows // g, g, channels)
    return grouped.mean(dim=1) if pool == "avg" else grouped.max(dim=1).values


def _pool_with_routing(
    z_rows: torch.Tensor, g: int, pool: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, C) frame vectors and, for max pooling, the (N, C) position of each maximum
    (torch.max's choice among ties, the position autograd routes the gradient to)."""
    if pool == "avg":
        return pool_frames(z_rows, g), None
    n_rows, channels = z_rows.shape
    values, where = z_rows.view(n_rows // g, g, channels).max(dim=1)
    return values, where


@torch.no_grad()
def clapp_step(
    x_rows: torch.Tensor,
    z_rows: torch.Tensor,
    g: int,
    pred: torch.Tensor,
    retro: torch.Tensor | None,
    pairs: Pairs,
    score_scale: float = 1.0,
    pool: str = "avg",
) -> RuleStep:
    """Explicit CLAPP (``retro`` given) or CLAPP-s (``retro`` None) update for one layer.

    Args:
        x_rows: (N*g, D) the layer's input patches, one row per output position.
        z_rows: (N*g, C) the layer's relu outputs for those rows, as computed when the
            frame was seen (for ring frames: with the weights of that time).
        g: positions per frame.
        pred: (K, C, C) prediction matrices P_k.
        retro: (K, C, C) retrodiction matrices R_k (CLAPP) or None (CLAPP-s: R_k = P_k^T).
        pairs: which frames are paired, their labels and weights.
        score_scale: s in u = s z'^T P_k c, the score's unit against the margin 1.
        pool: "avg" (mean of a frame's g positions) or "max" (per channel maximum; the
            error reaches only the position of the maximum).
    """
    n_rows, channels = z_rows.shape
    zhat, argmax = _pool_with_routing(z_rows, g, pool)  # (N, C)
    y, w = pairs.label, pairs.weight
    ctx = zhat[pairs.context]  # (K, M, C)
    cand = zhat[pairs.candidate]  # (K, M, C)

    # Future branch: score u = s z'^T P_k c; gate open while y u < 1 (inside the margin).
    dendrite = torch.bmm(ctx, pred.transpose(1, 2)).mul_(score_scale)  # rows s (P_k c)^T
    score = (cand * dendrite).sum(-1)  # (K, M)
    gate = (y * score < 1).to(z_rows.dtype)
    third = y * gate * w  # (K, M): the broadcast factor
    loss = (w * torch.clamp(1 - y * score, min=0)).sum()

    # Prediction matrices: Hebbian, candidate x context.
    d_pred = torch.bmm((cand * (score_scale * third)[..., None]).transpose(1, 2), ctx)

    # Postsynaptic error per frame: the dendritic prediction lands on the candidate frame,
    # the retrodiction on the context frame.
    err = torch.zeros_like(zhat)  # (N, C)
    err.index_add_(0, pairs.candidate.reshape(-1), (third[..., None] * dendrite).flatten(0, 1))
    if retro is None:
        back = torch.bmm(cand, pred).mul_(score_scale)  # (K, M, C): rows s (P_k^T z')^T
        err.index_add_(0, pairs.context.reshape(-1), (third[..., None] * back).flatten(0, 1))
        d_retro = None
    else:
        back = torch.bmm(cand, retro.transpose(1, 2)).mul_(score_scale)  # s (R_k z')^T
        score_r = (ctx * back).sum(-1)  # (K, M)
        third_r = y * (y * score_r < 1).to(z_rows.dtype) * w
        loss = loss + (w * torch.clamp(1 - y * score_r, min=0)).sum()
        d_retro = torch.bmm((ctx * (score_scale * third_r)[..., None]).transpose(1, 2), cand)
        err.index_add_(0, pairs.context.reshape(-1), (third_r[..., None] * back).flatten(0, 1))

    # Through the pool (average: 1/g to every position; max: all of it to the argmax
    # position) and relu', then the outer product with the layer's input: one matmul
    # over all frames.
    if argmax is None:
        err_rows = err.repeat_interleave(g, dim=0).mul_(1.0 / g)  # (N*g, C)
    else:
        err_rows = torch.zeros_like(z_rows).view(-1, g, channels)
        err_rows.scatter_(1, argmax[:, None, :], err[:, None, :])
        err_rows = err_rows.view(n_rows, channels)
    err_rows.mul_(z_rows > 0)
    d_weight = err_rows.t() @ x_rows  # (C, D)
    d_bias = err_rows.sum(0)  # (C,)

    used = w > 0
    pos = used & (y > 0)
    neg = used & (y < 0)
    return RuleStep(
        weight=d_weight,
        bias=d_bias,
        pred=d_pred,
        retro=d_retro,
        loss=loss,
        pos_score=(score * pos).sum(),
        pos_count=pos.sum(),
        neg_score=(score * neg).sum(),
        neg_count=neg.sum(),
        gate_open=(gate.bool() & used).sum(),
    )
