"""Typed, self-validating configuration: presets, TOML files and overrides.

A config is resolved in three steps: a preset, then a TOML file, then command-line flags.
The resolved config is saved next to every checkpoint, so a run can be resumed exactly.

Frame geometry. The learner predicts one vector per *frame* of ``frame_hop`` samples
(10 ms at 16 kHz). A layer's output runs at ``g`` positions per frame; the rule average-
pools those ``g`` positions into the layer's frame vector. ``g`` follows from the front
end's hop and the strides of the layers below: ``g_l = frame_hop / (frontend_hop * s_1 ...
s_l)`` and must be a positive integer.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from edge_clapp.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib


class Variant(str, Enum):
    """Which learning rule: CLAPP (own retrodiction matrices) or CLAPP-s (transposed P)."""

    CLAPP = "clapp"
    CLAPP_S = "clapp-s"


class Schedule(str, Enum):
    """Per (context, offset): one candidate drawn pos/neg with p = 1/2, or both every step."""

    EITHER = "either"
    BOTH = "both"


class FrontendKind(str, Enum):
    RAW = "raw"
    LOGMEL = "logmel"
    IMAGE = "image"  # camera, video or images: see VisionConfig


class LayerKind(str, Enum):
    CONV1D = "conv1d"
    LINEAR = "linear"
    CONV2D = "conv2d"


class Pool(str, Enum):
    """How a layer's positions become one vector per sample (an audio frame, an image
    patch): their mean, or per channel their maximum (the rule routes through the argmax)."""

    AVG = "avg"
    MAX = "max"


class Color(str, Enum):
    GRAY = "gray"
    RGB = "rgb"


class Negatives(str, Enum):
    """Where a camera learner's negative lies in the replayed frame: at the true
    future's position, or at any other position."""

    SAME = "same"
    OTHER = "other"


class Fit(str, Enum):
    """How a frame is brought to the configured size: centre-crop to the aspect ratio
    then resize, or stretch."""

    CROP = "crop"
    RESIZE = "resize"


class Observer(str, Enum):
    """How an activation range is tracked: the block's max |x|, or a percentile of |x|
    (outliers clip), either smoothed over blocks by ``quant.momentum``."""

    MINMAX = "minmax"
    PERCENTILE = "percentile"


# Bounds of what the learner is meant for (audio rates; a few negatives per context).
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 192000
MAX_NEGATIVES = 16
MAX_LR = 1e30  # float32 holds up to 3.4e38; a larger rate cannot even be applied
# The camera learner's per-step workspace (windows and outputs of every patch of the
# current and replayed frames): a step's temporaries are about twice as much again.
MAX_VISION_WORKSPACE_BYTES = 512 * 2**20
MAX_VISION_POOL_BYTES = 1024 * 2**20  # the camera learner's replay pool of frames


def _enum(enum_type: type[Enum], value: Any, name: str) -> Any:
    try:
        return enum_type(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum_type)
        raise ConfigError(f"{name} = {value!r} is not valid; allowed: {allowed}") from None


def _positive(value: Any, name: str, *, integer: bool = True, allow_zero: bool = False) -> Any:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        want = "an integer" if integer else "a number"
        raise ConfigError(f"{name} = {value!r} must be {want}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} = {value!r} must be a finite number")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} = {value!r} must be {'>= 0' if allow_zero else '> 0'}")
    return value


@dataclass
class FrontendConfig:
    """What turns samples into the first layer's input.

    raw: the waveform itself, one channel at ``sample_rate``.
    logmel: log mel energies, ``n_mels`` channels, one vector per ``hop`` samples.
    """

    kind: FrontendKind = FrontendKind.RAW
    sample_rate: int = 16000
    frame_hop: int = 160
    n_mels: int = 40
    win_length: int = 400
    n_fft: int = 512

    def __post_init__(self) -> None:
        self.kind = _enum(FrontendKind, self.kind, "frontend.kind")
        for name in ("sample_rate", "frame_hop", "n_mels", "win_length", "n_fft"):
            _positive(getattr(self, name), f"frontend.{name}")
        if not MIN_SAMPLE_RATE <= self.sample_rate <= MAX_SAMPLE_RATE:
            raise ConfigError(
                f"frontend.sample_rate = {self.sample_rate} is outside the supported "
                f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
            )
        if self.kind is FrontendKind.LOGMEL:
            if self.win_length > self.n_fft:
                raise ConfigError(
                    f"frontend.win_length = {self.win_length} exceeds frontend.n_fft = "
                    f"{self.n_fft}; raise n_fft or shorten the window"
                )
            if self.win_length < self.frame_hop:
                raise ConfigError(
                    f"frontend.win_length = {self.win_length} is shorter than frame_hop = "
                    f"{self.frame_hop}: samples would be skipped"
                )

    @property
    def channels(self) -> int:
        return 1 if self.kind is FrontendKind.RAW else self.n_mels

    @property
    def hop(self) -> int:
        """Samples per front-end output position."""
        return 1 if self.kind is FrontendKind.RAW else self.frame_hop


@dataclass
class LayerConfig:
    """One CLAPP layer. conv1d: kernel and stride over time; linear: one frame in, one out;
    conv2d: a square kernel x kernel convolution over an image patch, zero-padded by
    kernel // 2 on every side ("same" at stride 1), output size ceil(size / stride).
    ``pool``: how the layer's positions in one sample become its vector (avg or max)."""

    kind: LayerKind = LayerKind.CONV1D
    channels: int = 64
    kernel: int = 1
    stride: int = 1
    pool: Pool = Pool.AVG

    def __post_init__(self) -> None:
        self.kind = _enum(LayerKind, self.kind, "layers[].kind")
        self.pool = _enum(Pool, self.pool, "layers[].pool")
        _positive(self.channels, "layers[].channels")
        _positive(self.kernel, "layers[].kernel")
        _positive(self.stride, "layers[].stride")
        if self.kind is LayerKind.CONV2D:
            if self.kernel % 2 == 0:
                raise ConfigError(
                    f"a conv2d layer needs an odd kernel (padded by kernel // 2 on each "
                    f"side), got kernel = {self.kernel}"
                )
            if self.kernel > 15 or self.stride > 8:
                raise ConfigError(
                    f"conv2d kernel = {self.kernel}, stride = {self.stride}: at most 15 and 8"
                )
            return
        if self.pool is not Pool.AVG:
            raise ConfigError(
                f"layers[].pool = {self.pool.value!r} needs kind = 'conv2d': the audio "
                "layers (conv1d, linear) average their positions into frames"
            )
        if self.kind is LayerKind.LINEAR and (self.kernel, self.stride) != (1, 1):
            raise ConfigError(
                f"a linear layer has kernel = stride = 1, got kernel = {self.kernel}, "
                f"stride = {self.stride}; use kind = 'conv1d' for a temporal kernel"
            )
        if self.kernel < self.stride:
            raise ConfigError(
                f"layers[].kernel = {self.kernel} is smaller than its stride = {self.stride}:"
                " input samples would be skipped"
            )


@dataclass
class RuleConfig:
    """The CLAPP rule: variant, offsets 1..K, candidate schedule, plain SGD step size."""

    variant: Variant = Variant.CLAPP
    offsets: int = 12
    schedule: Schedule = Schedule.EITHER
    num_negatives: int = 1
    lr: float = 0.1
    pred_init_std: float = 0.1
    # Per layer: score u = score_scale * z'^T P_k c against the hinge margin 1; empty
    # means 1.0 for every layer. See README "Quantisation-aware learning".
    score_scale: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.variant = _enum(Variant, self.variant, "rule.variant")
        if not isinstance(self.score_scale, list):
            raise ConfigError(
                f"rule.score_scale = {self.score_scale!r} must be a list of numbers, one per "
                "layer (or empty for 1.0 everywhere)"
            )
        for i, value in enumerate(self.score_scale):
            _positive(value, f"rule.score_scale[{i}]", integer=False)
            if not 1e-6 <= value <= 1e6:
                raise ConfigError(f"rule.score_scale[{i}] = {value!r} is outside 1e-6..1e6")
        self.schedule = _enum(Schedule, self.schedule, "rule.schedule")
        _positive(self.offsets, "rule.offsets")
        _positive(self.num_negatives, "rule.num_negatives")
        if self.num_negatives > MAX_NEGATIVES:
            raise ConfigError(
                f"rule.num_negatives = {self.num_negatives} is more than {MAX_NEGATIVES}: "
                "each negative costs a full set of scores per block"
            )
        _positive(self.lr, "rule.lr", integer=False, allow_zero=True)
        if self.lr > MAX_LR:
            raise ConfigError(
                f"rule.lr = {self.lr!r} is more than {MAX_LR:g}: every update would overflow"
            )
        _positive(self.pred_init_std, "rule.pred_init_std", integer=False, allow_zero=True)
        if self.pred_init_std > 10:
            raise ConfigError(f"rule.pred_init_std = {self.pred_init_std} is more than 10")


@dataclass
class StreamConfig:
    """Block size and the negative replay pool; all buffers are sized from these."""

    block_frames: int = 100
    replay_capacity: int = 16
    replay_min_age_seconds: float = 2.0

    def __post_init__(self) -> None:
        _positive(self.block_frames, "stream.block_frames")
        _positive(self.replay_capacity, "stream.replay_capacity")
        _positive(
            self.replay_min_age_seconds,
            "stream.replay_min_age_seconds",
            integer=False,
            allow_zero=True,
        )
        if self.replay_min_age_seconds > 86400:
            raise ConfigError(
                f"stream.replay_min_age_seconds = {self.replay_min_age_seconds} is more than "
                "a day (86400)"
            )


@dataclass
class QuantConfig:
    """Quantisation-aware learning: the forward pass runs on int8 weights (symmetric, per
    output channel, ``weight_bits`` wide), int32 biases and 8-bit activations (int8 into
    the first layer, uint8 after each relu) as floats on the integer grid; updates go to
    the float weights (straight through). Off for the first ``warmup_blocks`` blocks;
    the observers run from the start so the scales are ready."""

    enabled: bool = False
    warmup_blocks: int = 0
    observer: Observer = Observer.MINMAX
    percentile: float = 99.99
    momentum: float = 0.9
    weight_bits: int = 7

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"quant.enabled = {self.enabled!r} must be true or false")
        _positive(self.warmup_blocks, "quant.warmup_blocks", allow_zero=True)
        self.observer = _enum(Observer, self.observer, "quant.observer")
        _positive(self.percentile, "quant.percentile", integer=False)
        if not 90 <= self.percentile <= 100:
            raise ConfigError(
                f"quant.percentile = {self.percentile!r} must be in 90..100 (a lower one "
                "clips more than a tenth of the activations; below the median of a relu "
                "output the range is 0)"
            )
        _positive(self.momentum, "quant.momentum", integer=False, allow_zero=True)
        if not self.momentum < 1:
            raise ConfigError(f"quant.momentum = {self.momentum!r} must be in [0, 1)")
        if type(self.weight_bits) is not int or self.weight_bits not in (7, 8):
            raise ConfigError(
                f"quant.weight_bits = {self.weight_bits!r} must be 7 or 8 (7 keeps "
                "onnxruntime's u8 x s8 kernels exact on CPUs without VNNI)"
            )


@dataclass
class VisionConfig:
    """The image front end (``frontend.kind = "image"``): every frame is brought to
    ``height`` x ``width`` (``fit``), in ``color``, values in [0, 1], and cut into a grid
    of overlapping ``patch`` x ``patch`` squares every ``patch_stride`` pixels. A patch
    predicts the patches ``skip_rows + k`` rows below it in the same column (k = 1 ..
    rule.offsets; the overlapping neighbour row is skipped). Its negatives are patches of
    a replayed frame at least ``replay_min_age_frames`` old, or of an earlier scene: at
    any other position (``negatives = "other"``, the default) or at the same position
    (``"same"``, as the published image setup). From a static camera a replayed frame's
    same position is a near copy of the true future: on vtest.avi "same" made true and
    negative scores equal in layers 2-3 within 100 frames, "other" learned.

    A mean absolute change between frames above ``scene_cut`` (0..1, on a small grey
    thumbnail; 0 disables) starts a new scene: opencv-doc's Megamind.avi has 4 cuts
    measuring 0.17-0.19 and changes inside a shot below 0.02 (vtest.avi below 0.01, the
    hand-held tree.avi 0.08)."""

    height: int = 32
    width: int = 32
    color: Color = Color.GRAY
    fit: Fit = Fit.CROP
    patch: int = 8
    patch_stride: int = 4
    skip_rows: int = 1
    scene_cut: float = 0.1
    replay_min_age_frames: int = 10
    negatives: Negatives = Negatives.OTHER

    def __post_init__(self) -> None:
        self.color = _enum(Color, self.color, "vision.color")
        self.fit = _enum(Fit, self.fit, "vision.fit")
        self.negatives = _enum(Negatives, self.negatives, "vision.negatives")
        for name in ("height", "width", "patch", "patch_stride"):
            _positive(getattr(self, name), f"vision.{name}")
        _positive(self.skip_rows, "vision.skip_rows", allow_zero=True)
        _positive(self.replay_min_age_frames, "vision.replay_min_age_frames", allow_zero=True)
        _positive(self.scene_cut, "vision.scene_cut", integer=False, allow_zero=True)
        if self.scene_cut > 1:
            raise ConfigError(f"vision.scene_cut = {self.scene_cut!r} must be in 0..1")
        if max(self.height, self.width) > 1024:
            raise ConfigError(
                f"vision.height x width = {self.height} x {self.width}: at most 1024 each "
                "(frames are learned whole, one per step)"
            )
        if self.patch > min(self.height, self.width):
            raise ConfigError(
                f"vision.patch = {self.patch} is larger than the {self.height} x "
                f"{self.width} frame"
            )
        for name, size in (("height", self.height), ("width", self.width)):
            if (size - self.patch) % self.patch_stride:
                fitting = (
                    self.patch + (size - self.patch) // self.patch_stride * self.patch_stride
                )
                raise ConfigError(
                    f"vision.{name} = {size} is not covered by {self.patch}-pixel patches "
                    f"every {self.patch_stride}: pick a {name} of patch + n x patch_stride "
                    f"(e.g. {fitting})"
                )

    @property
    def channels(self) -> int:
        return 1 if self.color is Color.GRAY else 3

    @property
    def grid(self) -> tuple[int, int]:
        """Patch rows and columns of a frame."""
        return (
            (self.height - self.patch) // self.patch_stride + 1,
            (self.width - self.patch) // self.patch_stride + 1,
        )


@dataclass
class Config:
    preset: str = "custom"
    seed: int = 0
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    layers: list[LayerConfig] = field(default_factory=list)
    rule: RuleConfig = field(default_factory=RuleConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)

    def __post_init__(self) -> None:
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int)
            or not 0 <= self.seed < 2**63
        ):
            raise ConfigError(f"seed = {self.seed!r} must be an integer in [0, 2**63)")
        if not self.layers:
            raise ConfigError("layers is empty: a config needs at least one layer")
        if self.rule.score_scale and len(self.rule.score_scale) != len(self.layers):
            raise ConfigError(
                f"rule.score_scale has {len(self.rule.score_scale)} values for "
                f"{len(self.layers)} layers: give one per layer, or none for 1.0 everywhere"
            )
        if self.is_vision:
            self._check_vision()
            return
        for i, layer in enumerate(self.layers):
            if layer.kind is LayerKind.CONV2D:
                raise ConfigError(
                    f"layers[{i}] is conv2d, which needs frontend.kind = 'image' (a camera, "
                    "video or image source); audio front ends take conv1d and linear layers"
                )
        # Check the frame geometry once, so that every layer pools a whole number of
        # positions into each frame, and every carry fits in one block.
        g = self.positions_per_frame()
        F = self.stream.block_frames
        for i, layer in enumerate(self.layers):
            if layer.kernel - layer.stride > F * g[i]:
                raise ConfigError(
                    f"layers[{i}].kernel = {layer.kernel} reaches further back than one "
                    f"block ({F * g[i]} input positions): raise stream.block_frames"
                )
        fe = self.frontend
        if fe.kind is FrontendKind.LOGMEL and fe.win_length - fe.frame_hop > self.block_samples:
            raise ConfigError(
                f"frontend.win_length = {fe.win_length} reaches further back than one block "
                f"({self.block_samples} samples): raise stream.block_frames"
            )
        if self.stream.block_frames < self.rule.offsets:
            raise ConfigError(
                f"stream.block_frames = {self.stream.block_frames} is smaller than "
                f"rule.offsets = {self.rule.offsets}; a block must hold at least K frames"
            )

    def _check_vision(self) -> None:
        for i, layer in enumerate(self.layers):
            if layer.kind is not LayerKind.CONV2D:
                raise ConfigError(
                    f"layers[{i}] is {layer.kind.value}: with frontend.kind = 'image' every "
                    "layer is conv2d"
                )
        rows, _ = self.vision.grid
        if rows < self.vision.skip_rows + self.rule.offsets + 1:
            raise ConfigError(
                f"the {rows}-row patch grid is too short for rule.offsets = "
                f"{self.rule.offsets} with vision.skip_rows = {self.vision.skip_rows}: a "
                f"patch must have a row {self.vision.skip_rows + self.rule.offsets} rows "
                "below it; lower the offsets or use smaller patches / a taller frame"
            )
        if self.quant.enabled:
            raise ConfigError(
                "quantisation-aware learning (quant.enabled) is not available for the image "
                "front end yet; learn in float (leave --quant out)"
            )
        v = self.vision
        pool = 4 * self.stream.replay_capacity * v.height * v.width * v.channels
        if pool > MAX_VISION_POOL_BYTES:
            raise ConfigError(
                f"stream.replay_capacity = {self.stream.replay_capacity} frames of "
                f"{v.height} x {v.width} x {v.channels} take {pool / 2**20:,.0f} MiB (at most "
                f"{MAX_VISION_POOL_BYTES // 2**20}): keep fewer frames or smaller ones"
            )
        workspace = self.vision_workspace_bytes()
        if workspace > MAX_VISION_WORKSPACE_BYTES:
            raise ConfigError(
                f"{self.vision.height} x {self.vision.width} frames cut into "
                f"{rows * self.vision.grid[1]:,} patches need {workspace / 2**20:,.0f} MiB of "
                f"workspace per step (at most {MAX_VISION_WORKSPACE_BYTES // 2**20} MiB, and "
                "as much again in temporaries): use a smaller frame, a larger "
                "patch_stride, or fewer channels"
            )

    @property
    def is_vision(self) -> bool:
        return self.frontend.kind is FrontendKind.IMAGE

    @property
    def replayed_frames(self) -> int:
        """Frames a camera learner replays per step for its negatives: one for the
        "either" schedule, ``rule.num_negatives`` for "both"."""
        return 1 if self.rule.schedule is Schedule.EITHER else self.rule.num_negatives

    def vision_workspace_bytes(self) -> int:
        """Bytes of the camera learner's workspace: every layer's windows (g x D) and
        outputs (g x C) for each patch of the current and the replayed frames."""
        rows, cols = self.vision.grid
        frames = 1 + self.replayed_frames
        sizes, in_channels, total = self.patch_sizes(), self.vision.channels, 0
        for layer, size in zip(self.layers, sizes[1:], strict=True):
            window = in_channels * layer.kernel**2
            total += size * size * (window + layer.channels)
            in_channels = layer.channels
        return 4 * frames * rows * cols * total

    def patch_sizes(self) -> list[int]:
        """Side of a patch's square map at the input (index 0) and after every layer."""
        sizes = [self.vision.patch]
        for layer in self.layers:
            sizes.append(-(-sizes[-1] // layer.stride))
        return sizes

    # -- derived geometry -------------------------------------------------------------

    def positions_per_frame(self) -> list[int]:
        """``g`` for the front end (index 0) and every layer (1..L); for images, the
        positions of one patch."""
        if self.is_vision:
            return [size * size for size in self.patch_sizes()]
        fe = self.frontend
        if fe.frame_hop % fe.hop:
            raise ConfigError(f"frontend.frame_hop = {fe.frame_hop} is not a multiple of hop")
        g = [fe.frame_hop // fe.hop]
        for i, layer in enumerate(self.layers):
            if g[-1] % layer.stride:
                raise ConfigError(
                    f"layers[{i}].stride = {layer.stride} does not divide the {g[-1]} "
                    f"positions per {fe.frame_hop}-sample frame below it; pick strides "
                    f"whose product divides {fe.frame_hop // fe.hop}"
                )
            g.append(g[-1] // layer.stride)
        return g

    def receptive_fields(self) -> list[tuple[int, int]]:
        """Per layer (receptive field, jump) in samples: a layer's output position p
        depends on the ``field`` samples ending at ``(p + 1) * jump`` (causal: zero padding
        on the left)."""
        fe = self.frontend
        field, jump = (1, 1) if fe.kind is FrontendKind.RAW else (fe.win_length, fe.frame_hop)
        out = []
        for layer in self.layers:
            field += (layer.kernel - 1) * jump
            jump *= layer.stride
            out.append((field, jump))
        return out

    def score_scales(self) -> list[float]:
        return list(self.rule.score_scale) or [1.0] * len(self.layers)

    @property
    def block_samples(self) -> int:
        return self.stream.block_frames * self.frontend.frame_hop

    @property
    def frame_seconds(self) -> float:
        return self.frontend.frame_hop / self.frontend.sample_rate

    @property
    def block_seconds(self) -> float:
        return self.block_samples / self.frontend.sample_rate

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data. An audio config leaves out what only images use
        (the [vision] table, each layer's pool, always "avg" there), so that its
        checkpoints read as before the camera learner existed; a camera config leaves out
        the audio front end's and stream's settings, which it does not use."""
        data = json.loads(json.dumps(dataclasses.asdict(self), default=_enum_value))
        if not self.is_vision:
            del data["vision"]
            for layer in data["layers"]:
                del layer["pool"]
        else:  # likewise a camera config holds none of the audio-only settings
            data["frontend"] = {"kind": data["frontend"]["kind"]}
            data["stream"] = {"replay_capacity": data["stream"]["replay_capacity"]}
        return data

    def to_toml(self) -> str:
        """The config as TOML that ``--config`` reads back to an equal config (a camera
        config: equal in every setting a camera run uses; see ``to_dict``)."""
        data = self.to_dict()
        lines = [f"{k} = {_toml_value(data[k])}" for k in ("preset", "seed")]
        for section in [
            s for s in ("frontend", "rule", "stream", "quant", "vision") if s in data
        ]:
            lines += ["", f"[{section}]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in data[section].items()]
        for layer in data["layers"]:
            lines += ["", "[[layers]]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in layer.items()]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        data = copy.deepcopy(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; known: {sorted(known)}")
        layers = data.pop("layers", [])
        if not isinstance(layers, list):
            raise ConfigError("layers must be an array of tables ([[layers]] in TOML)")
        sections = {
            "frontend": _section(FrontendConfig, data.pop("frontend", {}), "frontend"),
            "rule": _section(RuleConfig, data.pop("rule", {}), "rule"),
            "stream": _section(StreamConfig, data.pop("stream", {}), "stream"),
            "quant": _section(QuantConfig, data.pop("quant", {}), "quant"),
            "vision": _section(VisionConfig, data.pop("vision", {}), "vision"),
            "layers": [
                _section(LayerConfig, layer, f"layers[{i}]") for i, layer in enumerate(layers)
            ],
        }
        return cls(**data, **sections)


def _section(cls: type, value: Any, where: str) -> Any:
    """One config table as its dataclass; unknown keys are named with the known ones."""
    if not isinstance(value, dict):
        raise ConfigError(f"[{where}] must be a table of keys, got {value!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"unknown config keys {unknown} in [{where}]; known: {sorted(known)}")
    return cls(**value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _enum_value(obj: Any) -> Any:
    if isinstance(obj, Enum):
        return obj.value
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def _conv(channels: int, kernel: int, stride: int) -> dict[str, Any]:
    return {"kind": "conv1d", "channels": channels, "kernel": kernel, "stride": stride}


def _conv2d(channels: int, kernel: int, stride: int, pool: str = "avg") -> dict[str, Any]:
    return {
        "kind": "conv2d", "channels": channels, "kernel": kernel, "stride": stride,
        "pool": pool,
    }  # fmt: skip


# Raw-waveform stack after Greedy InfoMax's audio encoder: kernels 10, 8, 4, 4, 4 and
# strides 5, 4, 2, 2, 2 (160 samples = 10 ms per output at 16 kHz), narrowed from 512 to
# 128 channels so the learner streams well faster than real time on two CPU cores.
_RAW_KERNELS = ((10, 5), (8, 4), (4, 2), (4, 2), (4, 2))

PRESETS: dict[str, dict[str, Any]] = {
    "raw": {
        "frontend": {"kind": "raw"},
        "layers": [_conv(128, k, s) for k, s in _RAW_KERNELS],
        "rule": {"variant": "clapp", "offsets": 12, "schedule": "either", "lr": 0.1},
        "stream": {"block_frames": 100, "replay_capacity": 16},
    },
    # The published width (512), for reference runs; far slower than real time x20 here.
    "raw-gim": {
        "frontend": {"kind": "raw"},
        "layers": [_conv(512, k, s) for k, s in _RAW_KERNELS],
        "rule": {"variant": "clapp", "offsets": 12, "schedule": "either", "lr": 0.1},
        "stream": {"block_frames": 100, "replay_capacity": 16},
    },
    # A microcontroller-sized learner: 32 log-mel bands, two temporal convolutions and a
    # linear layer of 48 units, 4 prediction offsets, a small replay pool. Log-mel inputs
    # are larger than a waveform's: lr 0.1 and 0.03 diverged on klettres, 0.01 and 0.003 did
    # not.
    "mcu": {
        "frontend": {"kind": "logmel", "n_mels": 32},
        "layers": [
            _conv(48, 3, 1),
            _conv(48, 3, 1),
            {"kind": "linear", "channels": 48},
        ],
        "rule": {"variant": "clapp", "offsets": 4, "schedule": "either", "lr": 0.003},
        "stream": {"block_frames": 20, "replay_capacity": 8},
    },
    # Camera / video: 32 x 32 grey frames cut into a 7 x 7 grid of 8 x 8 patches every 4
    # pixels (the published 64 x 64 / 16 / 8 geometry at half scale); three 3 x 3 conv
    # layers of 32, 64, 64 channels, one patch row predicting the rows 2..4 below it.
    "vision": {
        "frontend": {"kind": "image"},
        "vision": {"height": 32, "width": 32, "patch": 8, "patch_stride": 4},
        "layers": [
            _conv2d(32, 3, 1),
            _conv2d(64, 3, 2),
            _conv2d(64, 3, 1),
        ],
        "rule": {"variant": "clapp", "offsets": 3, "schedule": "either", "lr": 0.1},
        "stream": {"replay_capacity": 32},
    },
    # A microcontroller-sized camera learner: 24 x 24 grey frames, a 5 x 5 grid of 8 x 8
    # patches, two conv layers of 8 and 16 channels, rows 2..3 below, a pool of 16 frames.
    "vision-mcu": {
        "frontend": {"kind": "image"},
        "vision": {"height": 24, "width": 24, "patch": 8, "patch_stride": 4},
        "layers": [_conv2d(8, 3, 1), _conv2d(16, 3, 2)],
        "rule": {"variant": "clapp", "offsets": 2, "schedule": "either", "lr": 0.1},
        "stream": {"replay_capacity": 16},
    },
    # For smoke tests: the raw geometry with 8 channels.
    "tiny": {
        "frontend": {"kind": "raw"},
        "layers": [_conv(8, k, s) for k, s in _RAW_KERNELS],
        "rule": {"variant": "clapp", "offsets": 4, "schedule": "either", "lr": 0.1},
        "stream": {"block_frames": 20, "replay_capacity": 4},
    },
}


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)  # lists (layers) are replaced whole
    return out


def preset_dict(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return _merge({"preset": name}, PRESETS[name])


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is not a regular file: pass a TOML file")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(
            f"config file {str(path)!r} cannot be read ({exc.strerror}): pass a TOML file"
        ) from None


def resolve_config(
    preset: str | None = "raw",
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Preset, then TOML file, then overrides (nested dicts, e.g. {"rule": {"lr": 0.1}})."""
    data: dict[str, Any] = {}
    if config_file is not None:
        file_data = load_toml(config_file)
        preset = file_data.pop("preset", preset)
        if not isinstance(preset, str):
            raise ConfigError(f"preset = {preset!r} in {str(config_file)!r} must be a string")
    else:
        file_data = {}
    if preset is not None:
        data = preset_dict(preset)
    data = _merge(data, file_data)
    data = _merge(data, overrides or {})
    return Config.from_dict(data)
