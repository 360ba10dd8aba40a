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
    clapp-batch  the CLAPP losses (CLAPP or CLAPP-s, as the config's variant says) per
                 layer with detached inputs, one true future and one frame from the
                 batch per context and offset (not the config's schedule)
    supervised   end-to-end cross-entropy on the word of an utterance, from the last
                 layer's time average (the ceiling for the word probe)

Shape legend: B batch, T frames, C channels, K offsets, N negatives per context.

Reference: the autograd form of the rule (``autograd_clapp_step``) equals the explicit
rule (``rule.clapp_step``) in float64 to 1e-12 at every block of a stream
(tests/test_baselines.py), as the explicit rule equals the gradient (tests/test_rule.py).
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
from edge_clapp.frontend import make_frontend
from edge_clapp.layers import ClappLayer
from edge_clapp.learner import OnlineLearner, draw_pairs, initial_parameters, mark_segments
from edge_clapp.replay import ReplayPool
from edge_clapp.rule import Pairs, RuleStep

METHODS = ("hinge-cpc", "gim", "clapp-batch", "supervised")


class Encoder(torch.nn.Module):
    """The learner's layer stack as trainable parameters: (B, S) samples -> per layer
    frame vectors (B, S // frame_hop, C_l), the same numbers as ``OnlineLearner.encode``.
    ``params``: per layer weight, bias, pred (and retro), default the initial ones of
    ``OnlineLearner(config)``."""

    def __init__(self, config: Config, params: list[dict[str, torch.Tensor]] | None = None):
        super().__init__()
        if config.quant.enabled:
            raise ConfigError("the backprop baselines train float encoders: turn off [quant]")
        params = params if params is not None else initial_parameters(config)[0]
        self.frontend = make_frontend(config.frontend)
        g = config.positions_per_frame()[1:]
        self.geometry = [
            (layer.kernel, layer.stride, layer.kernel - layer.stride, g[i])
            for i, layer in enumerate(config.layers)
        ]

        def plist(name: str) -> torch.nn.ParameterList:
            return torch.nn.ParameterList(
                [torch.nn.Parameter(p[name].detach().clone()) for p in params]
            )

        self.weights, self.biases, self.preds = plist("weight"), plist("bias"), plist("pred")
        self.retros = plist("retro") if "retro" in params[0] else None

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

    def retro(self, i: int) -> torch.Tensor | None:
        return self.retros[i] if self.retros is not None else None

    @torch.no_grad()
    def write_into(self, learner: OnlineLearner) -> None:
        """Copy the trained weights into ``learner`` (same config)."""
        for i, layer in enumerate(learner.layers):
            layer.weight.copy_(self.weights[i])
            layer.bias.copy_(self.biases[i])
            layer.pred.copy_(self.preds[i])
            if self.retros is not None:
                layer.retro.copy_(self.retros[i])


# -- losses --------------------------------------------------------------------------------


def hinge_terms(
    ctx: torch.Tensor,
    cand: torch.Tensor,
    y: torch.Tensor | float,
    pred: torch.Tensor,
    retro: torch.Tensor | None = None,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (context, candidate) pair, rows (..., C), label y = +1 / -1: the hinge loss of
    ``rule.py``'s docstring and the score u. ``retro`` None: max(0, 1 - y s z'^T P c), with
    gradients into both (CLAPP-s, and Hinge-CPC); else CLAPP's two hinges, the context
    detached in the first and the candidate in the second. ``pred``/``retro``: (C, C), or
    (K, C, C) against (K, M, C) rows."""
    context = ctx if retro is None else ctx.detach()
    score = scale * (cand * (context @ pred.transpose(-1, -2))).sum(-1)
    hinge = torch.relu(1 - y * score)
    if retro is not None:
        score_r = scale * (ctx * (cand.detach() @ retro.transpose(-1, -2))).sum(-1)
        hinge = hinge + torch.relu(1 - y * score_r)
    return hinge, score


def _negatives(z: torch.Tensor, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Candidates drawn uniformly from every frame of the batch: ``shape`` + (C,). As in
    CPC's usual in-batch sampling, one may be a frame of the context's own window."""
    flat = z.reshape(-1, z.shape[-1])
    pick = torch.randint(0, flat.shape[0], shape, generator=gen)
    return flat[pick]


def hinge_cpc_loss(
    z: torch.Tensor,
    segments: torch.Tensor,
    pred: torch.Tensor,
    retro: torch.Tensor | None,
    gen: torch.Generator,
    scale: float = 1.0,
) -> torch.Tensor:
    """Frames z (B, T, C) with their recording ids ``segments`` (B, T). Per context and
    offset k: its frame k later (y = +1, or y = -1 where a recording boundary lies between,
    a natural negative as in the online learner) and one frame drawn from the batch
    (y = -1); mean hinge over pairs and offsets."""
    batch, frames, _ = z.shape
    total = z.new_zeros(())
    for k in range(1, pred.shape[0] + 1):
        ctx = z[:, :-k]  # (B, T-k, C)
        y = torch.where(segments[:, :-k] == segments[:, k:], 1.0, -1.0)
        neg = _negatives(z, (batch, frames - k), gen)
        r = retro[k - 1] if retro is not None else None
        h_future, _ = hinge_terms(ctx, z[:, k:], y, pred[k - 1], r, scale)
        h_negative, _ = hinge_terms(ctx, neg, -1.0, pred[k - 1], r, scale)
        total = total + h_future.mean() + h_negative.mean()
    return total / pred.shape[0]


def infonce_loss(
    z: torch.Tensor,
    segments: torch.Tensor,
    pred: torch.Tensor,
    gen: torch.Generator,
    negatives: int = 10,
) -> torch.Tensor:
    """Greedy InfoMax's loss on frames z (B, T, C): per context and offset, a softmax over
    its frame k later and ``negatives`` frames from the batch, cross-entropy on the true
    one; contexts whose frame k later is in another recording are left out."""
    batch, frames, _ = z.shape
    total = z.new_zeros(())
    for k in range(1, pred.shape[0] + 1):
        p = z[:, :-k] @ pred[k - 1].t()  # (B, T-k, C): rows (W_k c)^T
        pos = (z[:, k:] * p).sum(-1, keepdim=True)
        neg = (_negatives(z, (batch, frames - k, negatives), gen) * p[:, :, None]).sum(-1)
        logits = torch.cat([pos, neg], dim=-1).flatten(0, 1)
        target = logits.new_zeros(len(logits), dtype=torch.long)
        nll = F.cross_entropy(logits, target, reduction="none")
        same = (segments[:, :-k] == segments[:, k:]).flatten().to(nll.dtype)
        total = total + (nll * same).sum() / same.sum().clamp(min=1.0)
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
    encoder: Encoder,
    samples: torch.Tensor,
    segments: torch.Tensor,
    settings: TrainSettings,
    scales: list[float],
    gen: torch.Generator,
) -> torch.Tensor:
    method = settings.method
    frames = encoder(samples, detach_inputs=method != "hinge-cpc")
    if method == "hinge-cpc":  # one hinge, no retrodiction, gradients through everything
        return hinge_cpc_loss(frames[-1], segments, encoder.preds[-1], None, gen, scales[-1])
    total = frames[0].new_zeros(())
    for i, z in enumerate(frames):
        if method == "gim":
            total = total + infonce_loss(z, segments, encoder.preds[i], gen, settings.negatives)
        else:
            total = total + hinge_cpc_loss(
                z, segments, encoder.preds[i], encoder.retro(i), gen, scales[i]
            )
    return total


def train_encoder(
    config: Config,
    train_audio: Sequence[np.ndarray],
    settings: TrainSettings,
    words: Sequence[str] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> tuple[Encoder, list[float]]:
    """Trains ``settings.method`` from ``OnlineLearner(config)``'s initial weights on
    ``train_audio`` (mono recordings at the config's rate); returns the encoder and the
    loss per step.

    Self-supervised methods see windows of ``window_frames`` frames cut at random from the
    recordings joined end to end (in the given order), ``epochs`` x the audio in all; a
    frame belongs to the recording its last sample comes from, and pairs across a
    recording boundary are negatives (hinge) or left out (InfoNCE). The supervised method
    sees whole recordings (cut or zero-padded to the longest, at most ``window_frames``)
    with their ``words``; the loss averages over real frames only.
    """
    gen = torch.Generator().manual_seed(settings.seed)
    encoder = Encoder(config)
    hop = config.frontend.frame_hop
    window = settings.window_frames * hop
    params = list(encoder.parameters())
    head = None
    if settings.method == "supervised":
        if words is None or len(words) != len(train_audio):
            raise ConfigError("the supervised baseline needs one word label per recording")
        classes = sorted(set(words))
        channels = config.layers[-1].channels
        head = torch.nn.Linear(channels, len(classes))
        with torch.no_grad():
            head.weight.copy_(
                torch.randn(len(classes), channels, generator=gen) / channels**0.5
            )
            head.bias.zero_()
        params += list(head.parameters())
        labels = torch.tensor([classes.index(w) for w in words])
        steps = max(1, round(settings.epochs * len(train_audio) / settings.batch))
    else:
        stream = torch.from_numpy(np.concatenate(list(train_audio)).astype(np.float32))
        owner = torch.from_numpy(
            np.repeat(np.arange(len(train_audio)), [len(a) for a in train_audio])
        )  # recording index of every sample
        total_samples = len(stream)
        if total_samples < window:
            raise ConfigError(
                f"{total_samples / config.frontend.sample_rate:.1f} s of training audio is "
                f"shorter than one window ({window / config.frontend.sample_rate:.2f} s)"
            )
        steps = max(1, round(settings.epochs * total_samples / (window * settings.batch)))
        frame_ends = torch.arange(1, settings.window_frames + 1) * hop - 1
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    scales = config.score_scales()
    losses = []
    for step in range(steps):
        if head is not None:
            pick = torch.randint(0, len(train_audio), (settings.batch,), generator=gen)
            lengths = [min(len(train_audio[i]) // hop * hop, window) for i in pick.tolist()]
            samples = torch.zeros(settings.batch, max(lengths))
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
            segments = owner[starts[:, None] + frame_ends[None]]  # (B, T)
            loss = _self_supervised_loss(encoder, samples, segments, settings, scales, gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, steps, losses[-1])
    return encoder, losses


def train_baseline(
    config: Config,
    train_audio: Sequence[np.ndarray],
    settings: TrainSettings,
    words: Sequence[str] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> tuple[OnlineLearner, list[float]]:
    """``train_encoder``, its weights written into an ``OnlineLearner(config)`` (for its
    checkpoint, ``encode`` and probes)."""
    encoder, losses = train_encoder(config, train_audio, settings, words, on_step)
    learner = OnlineLearner(config)
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
        hinge, score = hinge_terms(ctx, cand, y, pred, retro, score_scale)
        loss = (w * hinge).sum()
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
    """End-to-end Hinge-CPC at batch 1 on the learner's blocks, for the cost benchmark.

    Per block: the same replayed negative block, segments and pairs as
    ``OnlineLearner.step`` would draw (same functions, same generator state); the whole
    stack runs with gradients on the block plus enough earlier audio that the K ring
    frames are what a stream computes (the last layer's receptive field), and on the
    replayed block; the hinge loss (one hinge, no retrodiction) on the last layer's
    frames; one SGD step back through every layer. It holds no ``OnlineLearner``."""

    def __init__(self, config: Config) -> None:
        params, self.generator = initial_parameters(config)
        self.config = config
        self.encoder = Encoder(config, params)
        rule, hop = config.rule, config.frontend.frame_hop
        self.K, self.F, self.hop = rule.offsets, config.stream.block_frames, hop
        field, jump = config.receptive_fields()[-1]
        self.lead = math.ceil((field - jump) / hop)  # frames that warm the ring's field up
        self.history = torch.zeros((self.K + self.lead) * hop)
        min_age = math.ceil(config.stream.replay_min_age_seconds / config.block_seconds)
        self.pool = ReplayPool(config.stream.replay_capacity, config.block_samples, min_age)
        self.segment = torch.zeros(self.K + self.F, dtype=torch.int64)
        self.ring_valid = torch.zeros(self.K, dtype=torch.bool)
        self.next_segment, self.blocks = 0, 0
        self.scale = config.score_scales()[-1]
        self.optimizer = torch.optim.SGD(self.encoder.parameters(), lr=rule.lr)

    def step(self, samples: np.ndarray | torch.Tensor, starts: Sequence[int] = ()) -> float:
        block = torch.as_tensor(samples, dtype=torch.float32)
        K, F = self.K, self.F
        self.next_segment = mark_segments(
            self.segment, K, self.hop, starts, self.next_segment, self.blocks == 0
        )
        negative = self.pool.draw(self.blocks, self.generator)
        have = negative is not None
        pairs = draw_pairs(
            self.config.rule, self.ring_valid, self.segment, self.generator, have
        )
        window = torch.cat([self.history, block])[None]
        z = self.encoder(window)[-1][0][self.lead :]  # (K + F, C): ring, then this block
        if have:
            z = torch.cat([z, self.encoder(negative[None])[-1][0]])
        else:
            z = torch.cat([z, torch.zeros_like(z[K:])])  # unused: no pair points there
        hinge, _ = hinge_terms(
            z[pairs.context], z[pairs.candidate], pairs.label, self.encoder.preds[-1], None,
            self.scale,
        )  # fmt: skip
        loss = (pairs.weight * hinge).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.history.copy_(window[0, -len(self.history) :])
        self.segment[:K] = self.segment[F:]
        self.ring_valid.fill_(True)
        self.pool.offer(block, self.blocks, self.generator)
        self.blocks += 1
        return loss.item()
