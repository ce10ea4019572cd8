"""``kappa``: PEFT's KappaTune condition number κ = σ₁/(σ_p + 1e-8) (``selectors.md`` §2).

Low κ (isotropic) blocks are selected: they absorb new information with less forgetting. κ of a
square random matrix is huge and of a wide one small, so blocks are compared per module type.
"""

from __future__ import annotations

import numpy as np

from .score_rule import matrix_rule
from .rule_registry import RULES


def condition_number(singular_values, shape=None) -> float:
    s = np.asarray(singular_values, dtype=np.float64)
    return float(s.max() / (s.min() + 1e-8))


RULES.register("kappa")(
    matrix_rule("kappa", "low", condition_number, "float64", "KappaTune: lowest condition number (weights only)")
)
