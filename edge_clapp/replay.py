"""A fixed-capacity replay pool of past input blocks, the source of negatives.

Blocks enter by reservoir sampling, so the pool holds a uniform sample of the whole stream
so far in ``capacity`` slots allocated up front. A block becomes eligible as a negative
once it is at least ``min_age_blocks`` old, so it is not the near past of the context.
"""

from __future__ import annotations

import torch


class ReplayPool:
    def __init__(self, capacity: int, block_samples: int, min_age_blocks: int) -> None:
        self.capacity = capacity
        self.min_age_blocks = min_age_blocks
        self.data = torch.zeros(capacity, block_samples)  # (slots, S) raw samples
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
        count = int(eligible.sum())
        if count == 0:
            return None
        slot = eligible.nonzero()[min(int(pick * count), count - 1), 0]
        return self.data[slot]

    def offer(
        self, samples: torch.Tensor, block_index: int, generator: torch.Generator
    ) -> None:
        """Reservoir sampling (algorithm R) over all blocks ever offered."""
        seen = int(self.offered)
        pick = int(torch.randint(0, seen + 1, (), generator=generator))
        slot = seen if seen < self.capacity else pick
        if slot < self.capacity:
            self.data[slot].copy_(samples)
            self.stamp[slot] = block_index
        self.offered += 1
