"""``low-entropy``: SKI with α = 1, no band: the most saturated attention (needs data). See ``selectors.md``."""

from __future__ import annotations

from .score_rule import profile_rule
from .rule_registry import RULES

RULES.register("low-entropy")(
    profile_rule(
        "low-entropy", "attention_entropy", "low", "SKI with α = 1, no band: the most saturated attention (needs data)"
    )
)
