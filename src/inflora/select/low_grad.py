"""``low-grad``: SKI with α = 0, no band: the weakest gradient ‖∂L/∂h‖ (needs data). See ``selectors.md``."""

from __future__ import annotations

from .score_rule import profile_rule
from .rule_registry import RULES

RULES.register("low-grad")(
    profile_rule(
        "low-grad", "activation_grad_norm", "low", "SKI with α = 0, no band: the weakest gradient ‖∂L/∂h‖ (needs data)"
    )
)
