"""``topk``: the ``k`` blocks of highest SKI, peaks or not."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .rule_registry import RULES
from .ski import ski_terms


@RULES.register("topk")
def topk_rule(entropy, grad, *, k: int = 3, alpha: float = 0.5, variant: str = "level") -> list[int]:
    """The ``k`` layers with the highest SKI, peaks or not."""
    if k < 1:
        raise ConfigError(f"topk needs k >= 1, got {k}")
    score = ski_terms(entropy, grad, alpha, variant)["ski"]
    return sorted(np.argsort(-score, kind="stable")[:k].tolist())
