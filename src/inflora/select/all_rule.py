"""``all``: every block (uniform LoRA), the reference each rule is compared with. It ignores K; under a
parameter budget its rank is lowered instead (``selectors.md`` §10)."""

from __future__ import annotations

from .score_rule import ScoreRule
from .rule_registry import RULES

RULES.register("all")(
    ScoreRule(
        "all",
        frozenset(),
        "none",
        lambda inp: ([1.0] * inp.num_layers, {}, {}),
        "every block (needs nothing)",
        picker_fn=lambda inp: lambda k: list(range(inp.num_layers)),
        arm="own",
    )
)
