"""``lisa``: Layerwise Importance Sampled AdamW (``selectors.md`` §6): K random blocks train fully,
resampled every N optimizer steps; embeddings and the head train throughout.

Faithful to LMFlow's callback: at every step with step mod N = 0 (step 0 included) all blocks are
frozen and K blocks, drawn uniformly without replacement, are unfrozen. Every block is trainable
when the optimizer is built, so all are in it; a frozen block has no gradient, so AdamW neither
steps nor decays it, and its moments wait for its next turn (LISA's behaviour; no reset). The draw
for interval i is seeded by (seed, i) alone, so a resumed run continues the same schedule. Freezing
during training is incompatible with DDP: one process only.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from ..errors import ConfigError
from ..models.architectures import get_blocks


class LisaSchedule:
    def __init__(self, model: nn.Module, k: int, interval: int, seed: int):
        self.blocks = get_blocks(model)
        n = len(self.blocks)
        if not 1 <= k <= n:
            raise ConfigError(f"lisa needs 1 <= k <= {n} active blocks, got k={k}")
        if interval < 1:
            raise ConfigError(f"the LISA interval must be at least 1 step, got {interval}")
        self.k, self.interval, self.seed = k, interval, seed
        self.active: list[int] = []
        self.history: list[dict] = []

    def blocks_at(self, step: int) -> list[int]:
        """The K blocks active at ``step`` (the same for every step of one interval)."""
        rng = np.random.default_rng([self.seed, step // self.interval])
        return sorted(rng.choice(len(self.blocks), self.k, replace=False).tolist())

    def before_step(self, step: int) -> None:
        """Freeze every block but the interval's K; called by the loop before each optimizer step."""
        chosen = self.blocks_at(step)
        if chosen == self.active:
            return
        for i, block in enumerate(self.blocks):
            for p in block.parameters():
                p.requires_grad = i in chosen
        self.active = chosen
        self.history.append({"step": step, "blocks": chosen})

    def trainable_params(self, total_trainable: int) -> int:
        """Trainable at any one step: everything outside the blocks plus K blocks of mean size."""
        sizes = [sum(p.numel() for p in b.parameters()) for b in self.blocks]
        return total_trainable - sum(sizes) + round(self.k * sum(sizes) / len(sizes))
