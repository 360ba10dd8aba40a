"""A fixed-capacity replay pool of past input blocks (or video frames), the source of
negatives.

Blocks enter by reservoir sampling, so the pool holds a uniform sample of the whole stream
so far in ``capacity`` slots allocated up front. A block becomes eligible as a negative
once it is at least ``min_age_blocks`` old, so it is not the near past of the context;
a video frame also once a scene cut lies between it and the present (``FramePool``).
"""

from __future__ import annotations

import torch


class ReplayPool:
    def __init__(
        self, capacity: int, item_shape: int | tuple[int, ...], min_age_blocks: int
    ) -> None:
        self.capacity = capacity
        self.min_age_blocks = min_age_blocks
        shape = (item_shape,) if isinstance(item_shape, int) else tuple(item_shape)
        self.data = torch.zeros(capacity, *shape)  # (slots, S) raw samples, or frames
        self.stamp = torch.full((capacity,), -1, dtype=torch.int64)  # block index, -1 empty
        self.offered = torch.zeros((), dtype=torch.int64)  # blocks offered so far

    def buffers(self) -> dict[str, torch.Tensor]:
        return {"data": self.data, "stamp": self.stamp, "offered": self.offered}

    def draw(self, block_index: int, generator: torch.Generator) -> torch.Tensor | None:
        """A random eligible block (a view into the pool), or None if none is old enough.

        Always consumes one random number, so the generator's sequence does not depend on
        the pool's contents (needed for exact resume)."""
        pick = torch.rand((), generator=generator)
        eligible = (self.stamp >= 0) & (block_index - self.stamp >= self.min_age_blocks)
        return self._pick(eligible, pick)

    def _pick(self, eligible: torch.Tensor, pick: torch.Tensor) -> torch.Tensor | None:
        count = int(eligible.sum())
        if count == 0:
            return None
        slot = eligible.nonzero()[min(int(pick * count), count - 1), 0]
        return self.data[slot]

    def offer(
        self, samples: torch.Tensor, block_index: int, generator: torch.Generator
    ) -> int | None:
        """Reservoir sampling (algorithm R) over all blocks ever offered. Returns the slot
        written, or None when the block was not kept."""
        seen = int(self.offered)
        pick = int(torch.randint(0, seen + 1, (), generator=generator))
        slot = seen if seen < self.capacity else pick
        if slot < self.capacity:
            self.data[slot].copy_(samples)
            self.stamp[slot] = block_index
        self.offered += 1
        return slot if slot < self.capacity else None


class FramePool(ReplayPool):
    """Past video frames; each remembers its scene. A frame of an earlier scene is a
    negative at any age (the cut is a natural boundary); one of the current scene only
    once ``min_age_blocks`` frames old."""

    def __init__(self, capacity: int, frame_shape: tuple[int, ...], min_age_frames: int):
        super().__init__(capacity, frame_shape, min_age_frames)
        self.scene = torch.full((capacity,), -1, dtype=torch.int64)

    def buffers(self) -> dict[str, torch.Tensor]:
        return {**super().buffers(), "scene": self.scene}

    def draw_frame(
        self, frame_index: int, scene: int, generator: torch.Generator
    ) -> torch.Tensor | None:
        """A random eligible frame (a view), or None; one random number either way."""
        pick = torch.rand((), generator=generator)
        old = frame_index - self.stamp >= self.min_age_blocks
        eligible = (self.stamp >= 0) & (old | (self.scene < scene))
        return self._pick(eligible, pick)

    def offer_frame(
        self, frame: torch.Tensor, frame_index: int, scene: int, generator: torch.Generator
    ) -> None:
        slot = self.offer(frame, frame_index, generator)
        if slot is not None:
            self.scene[slot] = scene
