"""``threshold``: every block whose SKI reaches ``tau``."""

from __future__ import annotations

from .rule_registry import RULES
from .ski import ski_terms


@RULES.register("threshold")
def threshold_rule(entropy, grad, *, tau: float = 0.6, alpha: float = 0.5, variant: str = "level") -> list[int]:
    """Every layer with SKI >= ``tau`` (SKI lies in [0, 1])."""
    score = ski_terms(entropy, grad, alpha, variant)["ski"]
    return [i for i, s in enumerate(score) if s >= tau]
