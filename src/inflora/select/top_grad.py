"""``top-grad``: Aletheia's idea on activations: the strongest gradient ‖∂L/∂h‖ (needs data). See ``selectors.md``."""

from __future__ import annotations

from .score_rule import profile_rule
from .rule_registry import RULES

RULES.register("top-grad")(
    profile_rule(
        "top-grad",
        "activation_grad_norm",
        "high",
        "Aletheia's idea on activations: the strongest gradient ‖∂L/∂h‖ (needs data)",
    )
)
