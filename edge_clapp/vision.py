"""Learning from a camera: the Conv2d patch encoder and its online learner.

Shape legend:
    H, W   frame height and width            Ci   image channels (1 grey, 3 RGB)
    R, Q   patch rows and columns             P    patches per frame (R * Q)
    p      patch side in pixels               s_l  side of a patch's map after layer l
    g_l    positions per patch (s_l ** 2)     D    C_in * kernel ** 2, one input window
    C      output channels                    K    prediction offsets
    n      replayed (negative) frames per step

Every frame is cut into a grid of overlapping patches (after the published vision setup:
64 x 64 crops, 16-pixel patches every 8, here scaled by the config). Each patch goes
through the same stack of convolutions on its own, and each layer pools its map into one
vector per patch (mean or maximum). These patch vectors are the rule's "frames": the
patch at grid row r, column c is a context; the patch ``skip_rows + k`` rows below it in
the same column is its true future for offset k; a patch of a replayed frame is a
negative (at another position, or at the future's: ``vision.negatives``).

A layer's workspace holds the windows and outputs of ``(1 + n) P`` patches: the current
frame's, then each replayed frame's. It is scratch (rebuilt every frame), allocated once.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from edge_clapp.config import Config, LayerConfig, RuleConfig, Schedule
from edge_clapp.layers import LayerParameters, init_parameters
from edge_clapp.learner import Counters, LayerMeter, LearnerBase, all_finite
from edge_clapp.replay import FramePool
from edge_clapp.rule import Pairs

# Bytes of layer outputs per chunk when encoding many images at once (bounds encode's
# memory; the vision preset's layer 1 takes 128 frames of it).
ENCODE_BYTES = 64 * 2**20


def as_frames(values: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Frames as float32: floats as they are (meant to lie in [0, 1]), uint8 (0..255, as
    cameras and image files give them) scaled by 1 / 255; other types are refused."""
    frames = torch.as_tensor(values)
    if frames.dtype == torch.uint8:
        return frames.to(torch.float32) / 255.0
    if frames.is_floating_point():
        return frames.to(torch.float32)
    raise TypeError(f"frames must be floats in [0, 1] or uint8 in 0..255, got {frames.dtype}")


def cut_patches(frames: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """(N, Ci, H, W) -> (N * P, Ci, p, p): every frame's patches in row-major grid order."""
    channels = frames.shape[1]
    tiles = frames.unfold(2, patch, stride).unfold(3, patch, stride)  # (N, Ci, R, Q, p, p)
    return tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, channels, patch, patch)


def window_rows(maps: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """(S, C_in, s, s) -> (S * g, D): one row per output position, in (patch, y, x) order;
    columns channel-major like the flattened weight (C, C_in, kernel, kernel). Zero
    padding of kernel // 2 on each side."""
    cols = F.unfold(maps, kernel, padding=kernel // 2, stride=stride)  # (S, D, g)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def pool_maps(maps: torch.Tensor, pool: str) -> torch.Tensor:
    """(S, C, s, s) -> (S, C): one vector per patch, the mean or the maximum of its map."""
    flat = maps.flatten(2)
    return flat.mean(dim=2) if pool == "avg" else flat.amax(dim=2)


def conv_forward(
    maps: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, kernel: int, stride: int
) -> torch.Tensor:
    """One layer on whole maps: (S, C_in, s, s) -> relu outputs (S, C, s', s')."""
    w4 = weight.view(weight.shape[0], -1, kernel, kernel)
    return F.conv2d(maps, w4, bias, stride=stride, padding=kernel // 2).relu_()


def patch_pairs(
    rule: RuleConfig,
    grid: tuple[int, int],
    skip: int,
    generator: torch.Generator,
    have_negatives: bool,
    negatives: str = "same",
) -> Pairs:
    """(context, candidate) pairs of one frame over a layer's workspace: current patches
    [0, P), replayed frame j's patches [(1 + j) P, (2 + j) P). For offset k the context
    at grid index m (row r) pairs with index m + (skip + k) Q (row r + skip + k, same
    column): its true future (y = +1), or a patch of a replayed frame (y = -1), by the
    rule's schedule: at the same position (``negatives = "same"``), or at any other
    position, drawn per pair (``"other"``). Slots whose future falls below the grid have
    weight 0."""
    if negatives not in ("same", "other"):
        raise ValueError(f"negatives = {negatives!r}: 'same' or 'other'")
    rows, cols = grid
    P, K = rows * cols, rule.offsets
    M = (rows - skip - 1) * cols  # contexts of offset 1; larger offsets use fewer
    context = torch.arange(M).expand(K, M)
    future = context + (skip + torch.arange(1, K + 1)[:, None]) * cols  # (K, M)
    valid = future < P
    future = torch.where(valid, future, 0)  # unused slots point at a harmless index

    def replayed(j: int) -> torch.Tensor:
        """Candidates in replayed frame j: the future's position, or another one."""
        position = future
        if negatives == "other":
            shift = torch.randint(1, P, (K, M), generator=generator)
            position = (future + shift) % P
        return position + (1 + j) * P

    if rule.schedule is Schedule.EITHER:
        positive = torch.rand(K, M, generator=generator) < 0.5
        candidate = torch.where(positive, future, replayed(0))
        label = torch.where(positive, 1.0, -1.0)
        valid = valid & (positive | have_negatives)
    else:
        n = rule.num_negatives
        candidate = torch.cat([future] + [replayed(j) for j in range(n)], dim=1)
        context = context.repeat(1, 1 + n)
        label = torch.cat([torch.ones(K, M), -torch.ones(K, n * M)], dim=1)
        valid = torch.cat([valid] + [valid & have_negatives] * n, dim=1)
    return Pairs.weighted(context, candidate, label, valid)


class Conv2dLayer(LayerParameters):
    """A CLAPP conv2d layer over patch maps, with its fixed workspace."""

    def __init__(
        self,
        config: LayerConfig,
        in_channels: int,
        size: int,
        rule: RuleConfig,
        samples: int,
        generator: torch.Generator,
    ) -> None:
        """``size``: the side of a patch's output map (``Config.patch_sizes``); the
        workspace holds ``samples`` patches."""
        self.config = config
        self.in_channels = in_channels
        self.channels = config.channels
        self.kernel = config.kernel
        self.stride = config.stride
        self.pool = config.pool.value
        self.size = size
        self.g = size**2
        init = init_parameters(config, in_channels, rule, generator)
        self.weight, self.bias, self.pred = init["weight"], init["bias"], init["pred"]
        self.retro = init.get("retro")
        self.x_rows = torch.zeros(samples * self.g, in_channels * self.kernel**2)
        self.z_rows = torch.zeros(samples * self.g, self.channels)

    def buffers(self) -> dict[str, torch.Tensor]:
        return {}

    def derived(self) -> dict[str, torch.Tensor]:
        """The workspace: rebuilt for every frame, counted in the state, not saved."""
        return {"x_rows": self.x_rows, "z_rows": self.z_rows}

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """The first S patches of the workspace from their input maps (S, C_in, s, s):
        writes their windows and relu outputs into the workspace, returns the output
        maps (S, C, s', s') for the next layer."""
        rows = slice(0, maps.shape[0] * self.g)
        x, z = self.x_rows[rows], self.z_rows[rows]
        x.copy_(window_rows(maps, self.kernel, self.stride))
        torch.addmm(self.bias, x, self.weight.t(), out=z)
        z.relu_()
        return self.maps(maps.shape[0])

    def maps(self, count: int) -> torch.Tensor:
        """The workspace's first ``count`` patches' outputs as maps (count, C, s', s')."""
        z = self.z_rows[: count * self.g].view(count, self.size, self.size, self.channels)
        return z.permute(0, 3, 1, 2)

    def forward_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """Whole maps, outside the workspace (inference)."""
        return conv_forward(maps, self.weight, self.bias, self.kernel, self.stride)


class VisionLearner(LearnerBase):
    """Learns from one frame at a time: (H, W, Ci) float32 in [0, 1]."""

    def __init__(self, config: Config) -> None:
        if not config.is_vision:
            raise ValueError("VisionLearner needs a config with frontend.kind = 'image'")
        self.config = config
        self.generator = torch.Generator().manual_seed(config.seed)
        vision, rule = config.vision, config.rule
        self.grid = vision.grid
        self.patches_per_frame = self.grid[0] * self.grid[1]
        self.negatives = config.replayed_frames
        samples = (1 + self.negatives) * self.patches_per_frame
        sizes = config.patch_sizes()
        self.layers: list[Conv2dLayer] = []
        in_channels = vision.channels
        for i, layer_config in enumerate(config.layers):
            self.layers.append(
                Conv2dLayer(
                    layer_config, in_channels, sizes[i + 1], rule, samples, self.generator
                )
            )
            in_channels = layer_config.channels
        self.score_scales = config.score_scales()
        shape = (vision.channels, vision.height, vision.width)
        self.pool = FramePool(
            config.stream.replay_capacity, shape, vision.replay_min_age_frames
        )
        # The current frame (slot 0) and the replayed ones (1..n), side by side.
        self.frames = torch.zeros(1 + self.negatives, *shape)
        self.next_segment = 0  # scenes started so far; the current scene's id
        self.pending_boundary = True  # the first frame starts a scene
        self.counters = Counters()
        self.meters = [LayerMeter() for _ in self.layers]
        self.interval = [LayerMeter() for _ in self.layers]

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        v = self.config.vision
        return (v.height, v.width, v.channels)

    def tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            for name, t in layer.parameters().items():
                out[f"layers.{i}.{name}"] = t
        for name, t in self.pool.buffers().items():
            out[f"replay.{name}"] = t
        out["frames"] = self.frames
        return out

    @property
    def encode_chunk(self) -> int:
        """Frames ``encode`` runs at once: as many as keep the largest layer's output maps
        within ENCODE_BYTES (a layer's maps are pooled, and freed, before the next)."""
        largest = max(layer.g * layer.channels for layer in self.layers)
        return max(1, ENCODE_BYTES // (4 * self.patches_per_frame * largest))

    def macs_per_frame(self) -> int:
        """Multiply-accumulates of the encoder's forward pass for one frame."""
        return self.patches_per_frame * sum(
            layer.g * layer.weight.numel() for layer in self.layers
        )

    # -- learning -----------------------------------------------------------------------

    def _admit(self, frame: torch.Tensor) -> bool:
        c = self.counters
        if not all_finite(frame):
            c.nonfinite_samples += int((~torch.isfinite(frame)).sum())
            c.blocks_skipped_nonfinite += 1
            self.pending_boundary = True  # the stream is broken here
            return False
        current = self.frames[0]
        current.copy_(frame.permute(2, 0, 1))
        out_of_range = int(((current < 0) | (current > 1)).sum())
        if out_of_range:
            c.out_of_range_samples += out_of_range
            current.clamp_(0.0, 1.0)
        c.saturated_samples += int((current >= 1.0).sum())
        return True

    @torch.no_grad()
    def step(
        self, frame: np.ndarray | torch.Tensor, boundary: bool = False, dropped: int = 0
    ) -> bool:
        """Learn from one frame (H, W, Ci), float values in [0, 1] (outside: clamped and
        counted) or uint8 0..255. ``boundary``: a new scene starts here; ``dropped``:
        frames lost before it. Returns False when the frame was refused (NaN or Inf);
        nothing changes then. A bad shape, type or ``dropped`` raises before any change."""
        frame = as_frames(frame)
        if tuple(frame.shape) != self.frame_shape:
            raise ValueError(
                f"expected a frame of shape {self.frame_shape} (height, width, channels), "
                f"got {tuple(frame.shape)}"
            )
        if isinstance(dropped, (bool, float)) or not 0 <= operator.index(dropped) < 2**62:
            raise ValueError(f"dropped = {dropped!r} must be a whole number of frames >= 0")
        dropped = operator.index(dropped)  # a plain int (numpy integers too)
        c = self.counters
        c.blocks += 1
        c.overflows += dropped
        if not self._admit(frame):
            return False
        if boundary or self.pending_boundary:
            self.next_segment += 1
            c.boundaries += 1
            self.pending_boundary = False
        index, scene = c.blocks_learned, self.next_segment

        replayed = [
            self.pool.draw_frame(index, scene, self.generator) for _ in range(self.negatives)
        ]
        have_negatives = all(r is not None for r in replayed)
        if have_negatives:
            for j, r in enumerate(replayed):
                self.frames[1 + j].copy_(r)
        else:
            c.negatives_unavailable_blocks += 1
        v = self.config.vision
        pairs = patch_pairs(self.config.rule, self.grid, v.skip_rows, self.generator,
                            have_negatives, v.negatives.value)  # fmt: skip
        pairs_used = int((pairs.weight > 0).sum())
        used = 1 + self.negatives if have_negatives else 1
        maps = cut_patches(self.frames[:used], v.patch, v.patch_stride)

        lr = self.config.rule.lr
        for i, layer in enumerate(self.layers):
            out = layer.forward(maps)
            self._contain_overflow(layer)
            update = self._rule_step(i, layer, pairs)
            self._apply(layer, update, lr)
            self.meters[i].add(update, pairs_used)
            self.interval[i].add(update, pairs_used)
            maps = out  # a view of the workspace: the next layer's input, a constant

        self.pool.offer_frame(self.frames[0], index, scene, self.generator)
        c.blocks_learned += 1
        return True

    # -- inference ----------------------------------------------------------------------

    @torch.no_grad()
    def encode_maps(self, frames: torch.Tensor) -> Iterator[torch.Tensor]:
        """Every layer's output maps for (N, Ci, H, W) frames, one layer at a time:
        (N * P, C_l, s_l, s_l)."""
        v = self.config.vision
        maps = cut_patches(frames, v.patch, v.patch_stride)
        for layer in self.layers:
            maps = layer.forward_maps(maps)
            yield maps

    @torch.no_grad()
    def encode(self, images: np.ndarray | torch.Tensor) -> list[torch.Tensor]:
        """Patch vectors of every layer for (N, H, W, Ci) images in [0, 1] (or uint8):
        [(N, P, C_l)], each patch's map pooled as its layer pools it. Does not touch the
        learner's state."""
        images = as_frames(images)
        if not all_finite(images):
            raise ValueError("the images hold NaN or Inf values: pass finite frames")
        if images.dim() == 3:
            images = images[None]
        if tuple(images.shape[1:]) != self.frame_shape:
            raise ValueError(
                f"expected images of shape (N, {', '.join(map(str, self.frame_shape))}), "
                f"got {tuple(images.shape)}"
            )
        n, P = images.shape[0], self.patches_per_frame
        out = [torch.zeros(n, P, layer.channels) for layer in self.layers]
        step = self.encode_chunk
        for first in range(0, n, step):
            chunk = images[first : first + step].permute(0, 3, 1, 2)
            for i, (maps, layer) in enumerate(
                zip(self.encode_maps(chunk), self.layers, strict=True)
            ):
                out[i][first : first + len(chunk)] = pool_maps(maps, layer.pool).view(
                    len(chunk), P, -1
                )
        return out
