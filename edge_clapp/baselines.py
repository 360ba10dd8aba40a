"""Baselines on the learner's own architecture: backprop-trained encoders and the CLAPP
rule in autograd form.

Every method starts from the same initial weights as ``OnlineLearner(config)`` and ends by
writing its weights back into such a learner, so that one checkpoint format, one
``encode`` and one probe serve them all.

Methods (mini-batches of windows cut from a stream of training audio):
    hinge-cpc    end-to-end Hinge-CPC: the hinge loss on the last layer's predictions,
                 gradients through every layer (the paper's backprop baseline)
    gim          Greedy InfoMax style: InfoNCE per layer, each layer's input detached
                 (backprop inside a layer only)
    clapp-batch  the CLAPP losses (CLAPP or CLAPP-s, as the config says) per layer with
                 detached inputs: the reference code's way of computing the rule
    supervised   end-to-end cross-entropy on the word of an utterance, from the last
                 layer's time average (the ceiling for the word probe)

Shape legend: B batch, T frames, C channels, K offsets, N negatives per context.

Reference: the autograd form of the rule (``autograd_clapp_step``) equals the explicit
rule (``rule.clapp_step``) within float32 rounding (tests/test_baselines.py), as the
explicit rule equals the gradient in float64 (tests/test_rule.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from edge_clapp.config import Config
from edge_clapp.errors import ConfigError
from edge_clapp.layers import ClappLayer
from edge_clapp.learner import OnlineLearner
from edge_clapp.rule import Pairs, RuleStep

METHODS = ("hinge-cpc", "gim", "clapp-batch", "supervised")


class Encoder(torch.nn.Module):
    """The learner's layer stack as trainable parameters: (B, S) samples -> per layer
    frame vectors (B, S // frame_hop, C_l), the same numbers as ``OnlineLearner.encode``."""

    def __init__(self, learner: OnlineLearner) -> None:
        super().__init__()
        if learner.config.quant.enabled:
            raise ConfigError("the backprop baselines train float encoders: turn off [quant]")
        self.frontend = learner.frontend
        self.hop = learner.config.frontend.frame_hop
        self.geometry = [
            (lyr.kernel, lyr.stride, lyr.carry_rows, lyr.g) for lyr in learner.layers
        ]

        def param(t: torch.Tensor) -> torch.nn.Parameter:
            return torch.nn.Parameter(t.detach().clone())

        self.weights = torch.nn.ParameterList([param(lyr.weight) for lyr in learner.layers])
        self.biases = torch.nn.ParameterList([param(lyr.bias) for lyr in learner.layers])
        self.preds = torch.nn.ParameterList([param(lyr.pred) for lyr in learner.layers])
        retros = [lyr.retro for lyr in learner.layers]
        self.retros = (
            torch.nn.ParameterList([param(r) for r in retros])
            if retros[0] is not None
            else None
        )

    def inputs(self, samples: torch.Tensor) -> torch.Tensor:
        """(B, S) -> the front end's output (B, T_in, C_in), each row from a zero state."""
        with torch.no_grad():
            return torch.stack([self.frontend.sequence(row) for row in samples])

    def forward(self, samples: torch.Tensor, detach_inputs: bool = False) -> list[torch.Tensor]:
        x = self.inputs(samples)
        batch = x.shape[0]
        frames = []
        for i, (kernel, stride, carry, g) in enumerate(self.geometry):
            if detach_inputs:
                x = x.detach()
            padded = torch.cat([x.new_zeros(batch, carry, x.shape[2]), x], dim=1)
            rows = padded.unfold(1, kernel, stride)  # (B, T_out, C_in, kernel)
            rows = rows.reshape(batch, rows.shape[1], -1)
            x = torch.relu(rows @ self.weights[i].t() + self.biases[i])  # (B, T_out, C)
            frames.append(x.view(batch, -1, g, x.shape[2]).mean(dim=2))
        return frames

    @torch.no_grad()
    def write_into(self, learner: OnlineLearner) -> None:
        """Copy the trained weights into ``learner`` (same config)."""
        for i, layer in enumerate(learner.layers):
            layer.weight.copy_(self.weights[i])
            layer.bias.copy_(self.biases[i])
            layer.pred.copy_(self.preds[i])
            if self.retros is not None:
                layer.retro.copy_(self.retros[i])


# -- losses on one layer's frame vectors (B, T, C) -------------------------------------


def _negatives(z: torch.Tensor, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Candidates drawn uniformly from every frame of the batch: ``shape`` + (C,)."""
    flat = z.reshape(-1, z.shape[-1])
    pick = torch.randint(0, flat.shape[0], shape, generator=gen)
    return flat[pick]


def hinge_cpc_loss(
    z: torch.Tensor,
    pred: torch.Tensor,
    retro: torch.Tensor | None,
    gen: torch.Generator,
) -> torch.Tensor:
    """Per context and offset, the true future (y = +1) and one frame drawn from the batch
    (y = -1), hinge with margin 1, mean over pairs. With ``retro``: CLAPP's two hinges,
    the context detached in the first, the candidate in the second."""
    batch, frames, _ = z.shape
    total = z.new_zeros(())
    for k in range(1, pred.shape[0] + 1):
        ctx = z[:, :-k]  # (B, T-k, C)
        pos = z[:, k:]
        neg = _negatives(z, (batch, frames - k), gen)
        for cand, y in ((pos, 1.0), (neg, -1.0)):
            if retro is None:
                u = (cand * (ctx @ pred[k - 1].t())).sum(-1)
                total = total + F.relu(1 - y * u).mean()
            else:
                u = (cand * (ctx.detach() @ pred[k - 1].t())).sum(-1)
                u_r = (ctx * (cand.detach() @ retro[k - 1].t())).sum(-1)
                total = total + F.relu(1 - y * u).mean() + F.relu(1 - y * u_r).mean()
    return total / pred.shape[0]


def infonce_loss(
    z: torch.Tensor, pred: torch.Tensor, gen: torch.Generator, negatives: int = 10
) -> torch.Tensor:
    """Greedy InfoMax's loss: per context and offset, softmax over the true future and
    ``negatives`` frames from the batch, cross-entropy on the true one."""
    batch, frames, _ = z.shape
    total = z.new_zeros(())
    for k in range(1, pred.shape[0] + 1):
        p = z[:, :-k] @ pred[k - 1].t()  # (B, T-k, C)
        pos = (z[:, k:] * p).sum(-1, keepdim=True)
        neg = (_negatives(z, (batch, frames - k, negatives), gen) * p[:, :, None]).sum(-1)
        logits = torch.cat([pos, neg], dim=-1).flatten(0, 1)
        total = total + F.cross_entropy(logits, logits.new_zeros(len(logits), dtype=torch.long))
    return total / pred.shape[0]


# -- training ------------------------------------------------------------------------


@dataclass
class TrainSettings:
    method: str
    epochs: float = 1.0  # passes over the training audio
    batch: int = 8
    window_frames: int = 128  # 1.28 s at the raw preset's 10 ms frames
    lr: float = 1e-3  # Adam
    negatives: int = 10  # gim only
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(
                f"method {self.method!r} unknown; available: {', '.join(METHODS)}"
            )
        for name in ("epochs", "batch", "window_frames", "lr", "negatives"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} = {value!r} must be a finite number > 0")


def _self_supervised_loss(
    encoder: Encoder, samples: torch.Tensor, settings: TrainSettings, gen: torch.Generator
) -> torch.Tensor:
    method = settings.method
    frames = encoder(samples, detach_inputs=method != "hinge-cpc")
    if method == "hinge-cpc":
        retro = encoder.retros[-1] if encoder.retros is not None else None
        return hinge_cpc_loss(frames[-1], encoder.preds[-1], retro, gen)
    total = frames[0].new_zeros(())
    for i, z in enumerate(frames):
        if method == "gim":
            total = total + infonce_loss(z, encoder.preds[i], gen, settings.negatives)
        else:
            retro = encoder.retros[i] if encoder.retros is not None else None
            total = total + hinge_cpc_loss(z, encoder.preds[i], retro, gen)
    return total


def train_baseline(
    config: Config,
    train_audio: Sequence[np.ndarray],
    settings: TrainSettings,
    words: Sequence[str] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> tuple[OnlineLearner, list[float]]:
    """Trains ``settings.method`` from ``OnlineLearner(config)``'s initial weights on
    ``train_audio`` (16 kHz mono recordings at the config's rate); returns a learner
    holding the trained weights and the loss per step.

    Self-supervised methods see windows of ``window_frames`` frames cut at random from the
    recordings joined end to end (in the given order), ``epochs`` x the audio in all. The
    supervised method sees whole recordings (cut or zero-padded to the longest, at most
    ``window_frames``) with their ``words``; the loss averages over real frames only.
    """
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    learner = OnlineLearner(config)
    encoder = Encoder(learner)
    hop = config.frontend.frame_hop
    window = settings.window_frames * hop
    params = list(encoder.parameters())
    head = None
    if settings.method == "supervised":
        if words is None or len(words) != len(train_audio):
            raise ConfigError("the supervised baseline needs one word label per recording")
        classes = sorted(set(words))
        head = torch.nn.Linear(config.layers[-1].channels, len(classes))
        params += list(head.parameters())
        labels = torch.tensor([classes.index(w) for w in words])
        total_samples = sum(len(a) for a in train_audio)
    else:
        stream = torch.from_numpy(np.concatenate(list(train_audio)).astype(np.float32))
        total_samples = len(stream)
        if total_samples < window:
            raise ConfigError(
                f"{total_samples / config.frontend.sample_rate:.1f} s of training audio is "
                f"shorter than one window ({window / config.frontend.sample_rate:.2f} s)"
            )
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    steps = max(1, round(settings.epochs * total_samples / (window * settings.batch)))
    if settings.method == "supervised":
        # One step per batch of recordings; the same number of passes over them.
        steps = max(1, round(settings.epochs * len(train_audio) / settings.batch))
    losses = []
    for step in range(steps):
        if head is not None:
            pick = torch.randint(0, len(train_audio), (settings.batch,), generator=gen)
            lengths = [min(len(train_audio[i]) // hop * hop, window) for i in pick.tolist()]
            longest = max(lengths)
            samples = torch.zeros(settings.batch, longest)
            for row, (i, n) in enumerate(zip(pick.tolist(), lengths, strict=True)):
                samples[row, :n] = torch.from_numpy(train_audio[i][:n])
            last = encoder(samples)[-1]  # (B, T, C)
            mask = torch.arange(last.shape[1])[None] < torch.tensor(lengths)[:, None] // hop
            pooled = (last * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
            loss = F.cross_entropy(head(pooled), labels[pick])
        else:
            starts = torch.randint(
                0, total_samples - window + 1, (settings.batch,), generator=gen
            )
            samples = torch.stack([stream[s : s + window] for s in starts.tolist()])
            loss = _self_supervised_loss(encoder, samples, settings, gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, steps, losses[-1])
    encoder.write_into(learner)
    return learner, losses


# -- the rule in autograd form, at batch 1 ------------------------------------------------


def autograd_clapp_step(layer: ClappLayer, pairs: Pairs, score_scale: float = 1.0) -> RuleStep:
    """The layer's CLAPP (or CLAPP-s) update from its workspace, by autograd of the loss in
    ``rule.py``'s docstring with the layer's input detached; every frame's output is
    recomputed from its input with the current weights (as the reference code does)."""
    with torch.enable_grad():
        weight = layer.weight.detach().requires_grad_(True)
        bias = layer.bias.detach().requires_grad_(True)
        pred = layer.pred.detach().requires_grad_(True)
        leaves = [weight, bias, pred]
        retro = None
        if layer.retro is not None:
            retro = layer.retro.detach().requires_grad_(True)
            leaves.append(retro)
        z_rows = torch.relu(torch.addmm(bias, layer.x_rows, weight.t()))
        zhat = z_rows.view(-1, layer.g, z_rows.shape[1]).mean(dim=1)
        ctx, cand = zhat[pairs.context], zhat[pairs.candidate]  # (K, M, C)
        y, w = pairs.label, pairs.weight
        context = ctx if retro is None else ctx.detach()
        score = score_scale * (cand * torch.bmm(context, pred.transpose(1, 2))).sum(-1)
        loss = (w * torch.relu(1 - y * score)).sum()
        if retro is not None:
            back = torch.bmm(cand.detach(), retro.transpose(1, 2))
            score_r = score_scale * (ctx * back).sum(-1)
            loss = loss + (w * torch.relu(1 - y * score_r)).sum()
        grads = torch.autograd.grad(loss, leaves)
    score = score.detach()
    used = w > 0
    pos, neg = used & (y > 0), used & (y < 0)
    return RuleStep(
        weight=-grads[0],
        bias=-grads[1],
        pred=-grads[2],
        retro=-grads[3] if retro is not None else None,
        loss=loss.detach(),
        pos_score=(score * pos).sum(),
        pos_count=pos.sum(),
        neg_score=(score * neg).sum(),
        neg_count=neg.sum(),
        gate_open=((y * score < 1) & used).sum(),
    )


class AutogradLearner(OnlineLearner):
    """``OnlineLearner`` with the rule computed through autograd instead of explicitly:
    the same stream, pairs and buffers; for measuring what the explicit form saves."""

    def __init__(self, config: Config) -> None:
        if config.quant.enabled:
            raise ConfigError("the autograd form is float only: turn off [quant]")
        super().__init__(config)

    def _rule_step(self, index: int, layer: ClappLayer, pairs: Pairs) -> RuleStep:
        return autograd_clapp_step(layer, pairs, self.score_scales[index])


class BackpropStreamer:
    """End-to-end Hinge-CPC at batch 1 on the learner's blocks: per block, the whole stack
    runs on the last K frames plus the block (with gradients kept through every layer) and
    on a replayed earlier block (the negatives), the hinge loss is taken on the last layer
    with the same pairs as the learner's, and one SGD step goes back through every layer.
    The same audio, forward work and pairs per step as ``OnlineLearner.step``."""

    def __init__(self, config: Config) -> None:
        self.learner = OnlineLearner(config)  # its pairs, pool and segments are reused
        self.encoder = Encoder(self.learner)
        self.hop = config.frontend.frame_hop
        K = config.rule.offsets
        self.history = torch.zeros(K * self.hop)
        self.optimizer = torch.optim.SGD(self.encoder.parameters(), lr=config.rule.lr)

    def step(self, samples: np.ndarray | torch.Tensor) -> float:
        lrn = self.learner
        block = torch.as_tensor(samples, dtype=torch.float32)
        index = lrn.counters.blocks_learned
        negative = lrn.pool.draw(index, lrn.generator)
        pairs = lrn._pairs(negative is not None)
        window = torch.cat([self.history, block])[None]
        z = self.encoder(window)[-1][0]  # (K + F, C): ring frames, then the block's
        if negative is not None:
            z = torch.cat([z, self.encoder(negative[None])[-1][0]])
        else:
            z = torch.cat([z, torch.zeros_like(z[lrn.K :])])
        last = len(self.encoder.preds) - 1
        retro = self.encoder.retros[last] if self.encoder.retros is not None else None
        ctx, cand = z[pairs.context], z[pairs.candidate]
        y, w = pairs.label, pairs.weight
        context = ctx if retro is None else ctx.detach()
        score = (cand * torch.bmm(context, self.encoder.preds[last].transpose(1, 2))).sum(-1)
        loss = (w * torch.relu(1 - y * score)).sum()
        if retro is not None:
            score_r = (ctx * torch.bmm(cand.detach(), retro.transpose(1, 2))).sum(-1)
            loss = loss + (w * torch.relu(1 - y * score_r)).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.history.copy_(block[-len(self.history) :])
        lrn.ring_valid.fill_(True)
        lrn.pool.offer(block, index, lrn.generator)
        lrn.counters.blocks_learned += 1
        return loss.item()
