"""``random``: a seeded random set of k blocks, the control any rule must beat (``selectors.md`` §7).

The same recipe as the ``lora-random`` strategy, so a seed draws the same blocks in both.
"""

from __future__ import annotations

import math
import random

from .score_rule import ScoreRule
from .rule_registry import RULES


def random_blocks(n_layers: int, k: int, seed: int) -> list[int]:
    """A seeded random set of ``k`` of ``n_layers`` blocks."""
    return sorted(random.Random(f"lora-random-{seed}").sample(range(n_layers), k))


RULES.register("random")(
    ScoreRule(
        "random",
        frozenset(),
        "none",
        lambda inp: ([math.nan] * inp.num_layers, {}, {"seed": inp.seed}),
        "uniformly random blocks, seeded (needs nothing)",
        picker_fn=lambda inp: lambda k: random_blocks(inp.num_layers, k, inp.seed),
        parameters={"k": 3, "seed": 0},
        arm="own",
    )
)
