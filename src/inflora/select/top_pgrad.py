"""``top-pgrad``: Aletheia's parameter-gradient form: the largest ‖∇θL‖ (needs data). See ``selectors.md``."""

from __future__ import annotations

from .score_rule import profile_rule
from .rule_registry import RULES

RULES.register("top-pgrad")(
    profile_rule(
        "top-pgrad", "param_grad_norm", "high", "Aletheia's parameter-gradient form: the largest ‖∇θL‖ (needs data)"
    )
)
