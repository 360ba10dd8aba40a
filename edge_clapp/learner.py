"""The online learner: owns all state, takes one block of samples at a time.

Shape legend: ``S`` samples per block, ``F`` frames per block, ``K`` offsets, ``C``
channels. Frame indices of a layer's workspace: ring ``[0, K)``, current ``[K, K+F)``,
replayed negative block ``[K+F, K+2F)``.

Every tensor the learner keeps is allocated in ``__init__`` from the config, so
``state_bytes`` is known before the first sample and does not change while it runs.
Per-block temporaries (scores, errors) have sizes fixed by the config too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from edge_clapp.config import Config, RuleConfig, Schedule
from edge_clapp.frontend import make_frontend
from edge_clapp.layers import ClappLayer, init_parameters
from edge_clapp.quant import RangeObserver, fake_quant
from edge_clapp.replay import ReplayPool
from edge_clapp.rule import Pairs, RuleStep, clapp_step, pool_frames

log = logging.getLogger(__name__)

# Samples at or beyond this magnitude count as saturated (a clipped recording).
SATURATION_LEVEL = 0.999
# A block whose samples all stay below this is silent: counted, and under quantisation
# not observed (digital silence would shrink every activation range towards zero).
SILENCE_LEVEL = 1e-4


@dataclass
class LayerMeter:
    """Sums over blocks of the rule's statistics for one layer."""

    blocks: int = 0
    loss: float = 0.0
    pos_score: float = 0.0
    pos_count: int = 0
    neg_score: float = 0.0
    neg_count: int = 0
    gate_open: int = 0
    pairs: int = 0

    def add(self, step: RuleStep, pairs: int) -> None:
        self.blocks += 1
        self.loss += float(step.loss)
        self.pos_score += float(step.pos_score)
        self.pos_count += int(step.pos_count)
        self.neg_score += float(step.neg_score)
        self.neg_count += int(step.neg_count)
        self.gate_open += int(step.gate_open)
        self.pairs += pairs

    def summary(self) -> dict[str, float]:
        def mean(total: float, count: int) -> float:
            return total / count if count else float("nan")

        return {
            "loss": mean(self.loss, self.blocks),
            "pos_score": mean(self.pos_score, self.pos_count),
            "neg_score": mean(self.neg_score, self.neg_count),
            "gate_open_fraction": mean(self.gate_open, self.pairs),
        }


@dataclass
class Counters:
    blocks: int = 0  # blocks offered to step()
    blocks_learned: int = 0
    blocks_skipped_nonfinite: int = 0
    nonfinite_samples: int = 0
    out_of_range_samples: int = 0  # |x| > 1, clamped to [-1, 1] before learning
    saturated_samples: int = 0  # |x| >= SATURATION_LEVEL
    silent_blocks: int = 0
    updates_rejected_nonfinite: int = 0
    activations_overflowed: int = 0  # layer steps whose outputs overflowed (zeroed)
    negatives_unavailable_blocks: int = 0  # replay pool had no block old enough
    boundaries: int = 0
    overflows: int = 0


def all_finite(t: torch.Tensor) -> bool:
    """Whether every element is finite. Fast path, one pass: the sum is finite only if
    every element is (an inf or a NaN propagates). A non-finite sum may also be an
    overflow of finite elements, so that case is settled element by element."""
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())


def _warn_sparingly(count: int, message: str) -> None:
    """Logs ``message % count`` at the 1st, 10th, 100th... occurrence: no flood."""
    if math.log10(count).is_integer():
        log.warning(message, count)


def initial_parameters(config: Config) -> tuple[list[dict[str, torch.Tensor]], torch.Generator]:
    """Every layer's initial parameters as ``make_learner(config)`` draws them, and the
    generator in the state the learner's would be in after them (its pairs come next),
    without allocating the learner's buffers."""
    generator = torch.Generator().manual_seed(config.seed)
    params = []
    in_channels = config.vision.channels if config.is_vision else config.frontend.channels
    for layer_config in config.layers:
        params.append(init_parameters(layer_config, in_channels, config.rule, generator))
        in_channels = layer_config.channels
    return params, generator


def mark_segments(
    segment: torch.Tensor,
    K: int,
    hop: int,
    starts: Sequence[int],
    next_segment: int,
    boundary_first: bool,
) -> int:
    """Writes the segment id of each current frame into ``segment[K:]`` (the ring's ids
    are ``segment[:K]``): a new recording starting at sample ``s`` of the block starts a
    new segment at frame ceil(s / hop); ``boundary_first`` starts one at frame 0. Returns
    the next segment id."""
    cur = segment[K:]
    F = len(cur)
    cur.fill_(next_segment)
    first_frames = sorted({math.ceil(s / hop) for s in starts if 0 <= s < F * hop})
    if boundary_first and (not first_frames or first_frames[0] != 0):
        first_frames.insert(0, 0)
    for frame in first_frames:
        next_segment += 1
        cur[frame:] = next_segment
    return next_segment


def draw_pairs(
    rule: RuleConfig,
    ring_valid: torch.Tensor,
    segment: torch.Tensor,
    generator: torch.Generator,
    have_negatives: bool,
) -> Pairs:
    """(context, candidate) pairs of one block over the workspace's frames: ring [0, K),
    current [K, K+F), replayed negative block [K+F, K+2F). Contexts are the frames k
    before each current frame; a candidate is its true future (y = +1, or -1 where a
    segment boundary lies between: a natural negative) or a replayed frame (y = -1), by
    the rule's schedule. Weights: 1 / (pairs in use), 0 for unused slots."""
    K, F = len(ring_valid), len(segment) - len(ring_valid)
    gen = generator
    j = torch.arange(F)
    offset = torch.arange(1, K + 1)[:, None]
    future = (K + j).expand(K, F)  # (K, F)
    context = K + j - offset  # (K, F)
    valid = torch.cat([ring_valid, torch.ones(F, dtype=torch.bool)])[context]
    crossing = segment[context] != segment[future]  # natural negatives
    replay = K + F + torch.randint(0, F, (K, F), generator=gen)

    if rule.schedule is Schedule.EITHER:
        positive = torch.rand(K, F, generator=gen) < 0.5
        use_replay = ~crossing & ~positive
        candidate = torch.where(use_replay, replay, future)
        label = torch.where(crossing | ~positive, -1.0, 1.0)
        valid = valid & ~(use_replay & (not have_negatives))
    else:
        n = rule.num_negatives
        extra = [replay] + [
            K + F + torch.randint(0, F, (K, F), generator=gen) for _ in range(n - 1)
        ]
        candidate = torch.cat([future, *extra], dim=1)  # (K, (1 + n) F)
        context = context.repeat(1, 1 + n)
        label = torch.cat([torch.where(crossing, -1.0, 1.0), -torch.ones(K, n * F)], dim=1)
        valid = torch.cat([valid, *[valid & have_negatives for _ in range(n)]], dim=1)
    return Pairs.weighted(context, candidate, label, valid)


class LearnerBase:
    """What the audio and the camera learners share: applying an update without ever
    making the state non-finite, containing overflowed activations, the meters, sizes.
    A subclass sets config, layers, counters, meters, interval and ``tensors()``."""

    config: Config
    layers: list
    score_scales: list[float]
    generator: torch.Generator
    next_segment: int  # segments (audio) or scenes (camera) started so far
    pending_boundary: bool  # the next block / frame starts a new one
    counters: Counters
    meters: list[LayerMeter]
    interval: list[LayerMeter]

    def tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @property
    def state_bytes(self) -> int:
        """Bytes of all state the learner holds (parameters, rings, pool, scratch, and
        under quantisation the grid's weights, which checkpoints do not store)."""
        derived = [t for layer in self.layers for t in layer.derived().values()]
        return sum(t.numel() * t.element_size() for t in [*self.tensors().values(), *derived])

    def parameter_count(self) -> dict[str, int]:
        forward = sum(layer.weight.numel() + layer.bias.numel() for layer in self.layers)
        rule = sum(
            layer.pred.numel() + (layer.retro.numel() if layer.retro is not None else 0)
            for layer in self.layers
        )
        return {"encoder": forward, "prediction": rule}

    def _contain_overflow(self, layer) -> None:
        """Zeroes activations that overflowed, so that they never enter the rings, the
        carries or the next layer; the state stays finite and checkpoints loadable.

        Only weights grown far too large (a learning rate too high) overflow here."""
        if all_finite(layer.z_rows):
            return
        layer.z_rows.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        self.counters.activations_overflowed += 1
        _warn_sparingly(
            self.counters.activations_overflowed,
            "activations overflowed in %d layer step(s) so far and were zeroed: the "
            "weights have grown too large; lower --lr (or rule.score_scale)",
        )

    def _apply(self, layer, update: RuleStep, lr: float) -> None:
        """Adds lr x the update to the layer, or nothing if any result would be non-finite."""
        pairs = [
            (layer.weight, update.weight),
            (layer.bias, update.bias),
            (layer.pred, update.pred),
        ]
        if layer.retro is not None:
            pairs.append((layer.retro, update.retro))
        # The sum is checked, not only the update: a finite step can still overflow.
        updated = [torch.add(param, delta, alpha=lr) for param, delta in pairs]
        if all(all_finite(u) for u in updated):
            for (param, _), new in zip(pairs, updated, strict=True):
                param.copy_(new)
            return
        self.counters.updates_rejected_nonfinite += 1
        _warn_sparingly(
            self.counters.updates_rejected_nonfinite,
            "%d non-finite layer update(s) rejected so far (weights left unchanged by "
            "them): the learning rate is probably too high for this input; lower --lr (or "
            "rule.score_scale)",
        )

    def _rule_step(self, index: int, layer, pairs: Pairs) -> RuleStep:
        """The rule's update for one layer from its workspace (explicit, no autograd)."""
        return clapp_step(
            layer.x_rows,
            layer.z_rows,
            layer.g,
            layer.pred,
            layer.retro,
            pairs,
            self.score_scales[index],
            pool=layer.pool,
        )

    def take_interval(self) -> list[dict[str, float]]:
        """Per-layer means since the previous call (for progress display)."""
        out = [m.summary() for m in self.interval]
        self.interval = [LayerMeter() for _ in self.layers]
        return out


class OnlineLearner(LearnerBase):
    def __init__(self, config: Config) -> None:
        self.config = config
        self.generator = torch.Generator().manual_seed(config.seed)
        self.frontend = make_frontend(config.frontend)
        g = config.positions_per_frame()
        rule, stream = config.rule, config.stream
        K, F = rule.offsets, stream.block_frames
        self.K, self.F = K, F

        self.layers: list[ClappLayer] = []
        in_channels = self.frontend.channels
        for i, layer_config in enumerate(config.layers):
            layer = ClappLayer(
                layer_config, in_channels, g[i + 1], rule, F, self.generator, config.quant
            )
            self.layers.append(layer)
            in_channels = layer_config.channels
        self.score_scales = config.score_scales()
        # Quantisation-aware learning: the range of the front end's output (int8 into
        # the first layer); each layer observes its own output.
        self.input_observer = RangeObserver(config.quant, signed=True)

        min_age = math.ceil(stream.replay_min_age_seconds / config.block_seconds)
        self.pool = ReplayPool(stream.replay_capacity, config.block_samples, min_age)
        self.block = torch.zeros(config.block_samples)
        self.segment = torch.zeros(K + F, dtype=torch.int64)  # ring + current frames
        self.ring_valid = torch.zeros(K, dtype=torch.bool)
        self.next_segment = 0
        self.pending_boundary = True  # the first block starts a segment
        self.counters = Counters()
        self.block_silent = False
        self.meters = [LayerMeter() for _ in self.layers]
        self.interval = [LayerMeter() for _ in self.layers]

    # -- state --------------------------------------------------------------------------

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the learner's state, by name (what a checkpoint stores)."""
        out: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            for name, t in {**layer.parameters(), **layer.buffers()}.items():
                out[f"layers.{i}.{name}"] = t
        for name, t in self.frontend.buffers().items():
            out[f"frontend.{name}"] = t
        for name, t in self.pool.buffers().items():
            out[f"replay.{name}"] = t
        if self.config.quant.enabled:
            out["quant.input_range"] = self.input_observer.range
        out["block"] = self.block
        out["segment"] = self.segment
        out["ring_valid"] = self.ring_valid
        return out

    def macs_per_second(self) -> int:
        """Multiply-accumulates of the encoder's forward pass per second of audio."""
        rate = self.config.frontend.sample_rate / self.config.frontend.frame_hop
        per_frame = sum(layer.g * layer.weight.numel() for layer in self.layers)
        return int(per_frame * rate)

    # -- quantisation -------------------------------------------------------------------

    @property
    def quant_active(self) -> bool:
        """Whether the next block (and ``encode``) runs on the integer grid."""
        quant = self.config.quant
        return quant.enabled and self.counters.blocks_learned >= quant.warmup_blocks

    @property
    def grid_ready(self) -> bool:
        """Whether inference runs on the int8 grid: past the warm-up and with at least
        one block learned (before it, no activation range has been observed)."""
        return self.quant_active and self.counters.blocks_learned > 0

    def _set_quant(self, active: bool) -> bool:
        for layer in self.layers:
            layer.quant_active = active
        return active

    def input_scale(self, index: int) -> torch.Tensor:
        """The scale of layer ``index``'s input grid: the front end's for the first
        layer, else the output scale of the layer below."""
        return self.input_observer.scale if index == 0 else self.layers[index - 1].out_scale

    def input_scales(self) -> list[torch.Tensor]:
        """Per layer, the scale of its input grid."""
        return [self.input_scale(i) for i in range(len(self.layers))]

    def quant_scales(self) -> dict[str, object]:
        """Every scale of the integer graph (what the int8 export writes)."""
        if not self.config.quant.enabled:
            raise ValueError("quantisation is not enabled in this learner's config")
        return {
            "weight_bits": self.config.quant.weight_bits,
            "input_scale": float(self.input_observer.scale),
            "layers": [
                {
                    "weight_scales": layer.weight_scales().tolist(),
                    "output_scale": float(layer.out_scale),
                }
                for layer in self.layers
            ],
        }

    # -- learning -----------------------------------------------------------------------

    def _admit(self, samples: torch.Tensor) -> bool:
        """Copy a block into the learner's buffer; refuse it if any sample is non-finite."""
        c = self.counters
        if not all_finite(samples):
            finite = torch.isfinite(samples)
            c.nonfinite_samples += int((~finite).sum())
            c.blocks_skipped_nonfinite += 1
            self.pending_boundary = True  # the stream is broken here
            return False
        self.block.copy_(samples)
        magnitude = self.block.abs()
        c.saturated_samples += int((magnitude >= SATURATION_LEVEL).sum())
        out_of_range = int((magnitude > 1.0).sum())
        if out_of_range:
            c.out_of_range_samples += out_of_range
            self.block.clamp_(-1.0, 1.0)
        self.block_silent = float(magnitude.max()) < SILENCE_LEVEL
        if self.block_silent:
            c.silent_blocks += 1
        return True

    def _segments(self, starts: Sequence[int]) -> None:
        """Segment id of each current frame; a new recording starts a new segment."""
        before = self.next_segment
        self.next_segment = mark_segments(
            self.segment, self.K, self.config.frontend.frame_hop, starts,
            self.next_segment, self.pending_boundary,
        )  # fmt: skip
        self.pending_boundary = False
        self.counters.boundaries += self.next_segment - before

    def _pairs(self, have_negatives: bool) -> Pairs:
        return draw_pairs(
            self.config.rule, self.ring_valid, self.segment, self.generator, have_negatives
        )

    @torch.no_grad()
    def step(
        self, samples: np.ndarray | torch.Tensor, starts: Sequence[int] = (), overflows: int = 0
    ) -> bool:
        """Learn from one block of ``block_samples`` mono samples at the config's rate.

        ``starts`` are sample offsets in the block where a new recording begins. Returns
        False when the block was refused (non-finite samples); nothing is changed then.
        """
        c = self.counters
        samples = torch.as_tensor(samples, dtype=torch.float32)
        if samples.shape != self.block.shape:
            raise ValueError(
                f"expected a block of {self.block.numel()} samples, got {tuple(samples.shape)}"
            )
        c.blocks += 1
        c.overflows += overflows
        if not self._admit(samples):
            return False
        block_index = c.blocks_learned

        # Segments, negatives and pairs for this block: shared by every layer.
        self._segments(starts)
        negative = self.pool.draw(block_index, self.generator)
        if negative is None:
            c.negatives_unavailable_blocks += 1
        pairs = self._pairs(negative is not None)
        pairs_used = int((pairs.weight > 0).sum())

        # Layer by layer: forward, rule, update. A layer's input is the previous layer's
        # output from before that layer's update, and is a constant to this layer.
        # Under quantisation every layer's input and output lies on its grid, and the
        # forward pass uses the grid's weights; the update goes to the float weights.
        x = self.frontend.stream(self.block)
        x_neg = self.frontend.fresh(negative) if negative is not None else None
        quantized = self._set_quant(self.quant_active)
        observe = self.config.quant.enabled and not self.block_silent
        if observe:
            self.input_observer.observe(x)
        if quantized:
            scale, bounds = self.input_observer.scale, self.input_observer.bounds
            x = fake_quant(x, scale, bounds)
            x_neg = fake_quant(x_neg, scale, bounds) if x_neg is not None else None
        lr = self.config.rule.lr
        for i, layer in enumerate(self.layers):
            if quantized:
                layer.quantize_parameters(self.input_scale(i))
            z = layer.forward_block(x, observe=observe)
            z_neg = layer.forward_negative(x_neg) if x_neg is not None else None
            self._contain_overflow(layer)
            update = self._rule_step(i, layer, pairs)
            self._apply(layer, update, lr)
            self.meters[i].add(update, pairs_used)
            self.interval[i].add(update, pairs_used)
            layer.commit_block()
            x, x_neg = z, z_neg

        # Keep the last K frames' segment ids as the ring's; remember this block.
        K, F = self.K, self.F
        self.segment[:K] = self.segment[F:]
        self.ring_valid.fill_(True)
        self.pool.offer(self.block, block_index, self.generator)
        c.blocks_learned += 1
        return True

    # -- inference ----------------------------------------------------------------------

    @torch.no_grad()
    def encode_positions(
        self, samples: np.ndarray | torch.Tensor, *, float_weights: bool = False
    ) -> list[torch.Tensor]:
        """Every layer's relu outputs for a whole recording from zero state, before the
        frame pooling: (S,) -> [(S // frame_hop * g_l, C_l)]. Once ``grid_ready`` they
        lie on each layer's output grid (code x scale); ``float_weights`` runs the float
        weights without any grid instead (what the float export computes). Does not
        touch the learner's state."""
        hop = self.config.frontend.frame_hop
        samples = torch.as_tensor(samples, dtype=torch.float32)
        samples = samples[: samples.numel() // hop * hop]
        if samples.numel() == 0:  # shorter than one frame: no frame to compute
            return [torch.zeros(0, layer.channels) for layer in self.layers]
        x = self.frontend.sequence(samples)
        quantized = self._set_quant(self.grid_ready and not float_weights)
        if quantized:
            x = fake_quant(x, self.input_observer.scale, self.input_observer.bounds)
        out = []
        for i, layer in enumerate(self.layers):
            params = None
            if quantized:  # into temporaries: the stream's weight_q, bias_q stay as they are
                temporaries = (torch.empty_like(layer.weight), torch.empty_like(layer.bias))
                params = layer.quantize_parameters(self.input_scale(i), temporaries)
            x = layer.forward_sequence(x, params)
            out.append(x)
        return out

    @torch.no_grad()
    def encode(
        self, samples: np.ndarray | torch.Tensor, *, float_weights: bool = False
    ) -> list[torch.Tensor]:
        """Frame vectors of every layer for a whole recording, starting from zero state:
        (S,) -> [(S // frame_hop, C_l) for each layer]. Does not touch the stream state."""
        positions = self.encode_positions(samples, float_weights=float_weights)
        return [
            pool_frames(x, layer.g) for x, layer in zip(positions, self.layers, strict=True)
        ]


def make_learner(config: Config) -> OnlineLearner:
    """The learner a config describes: the camera learner for ``frontend.kind = "image"``,
    else the audio one."""
    if config.is_vision:
        from edge_clapp.vision import VisionLearner

        return VisionLearner(config)
    return OnlineLearner(config)
