"""``ski`` and ``ski-decay``: the top SKI peaks, widened (``ski.py`` has the score and the peaks)."""

from __future__ import annotations

import functools

from .rule_registry import RULES
from .ski import band_from_peaks, local_maxima, ski_terms


@RULES.register("ski")
def ski_rule(
    entropy,
    grad,
    *,
    alpha: float = 0.5,
    top: int = 2,
    widen: int = 1,
    boundary: bool = True,
    variant: str = "level",
    plateaus: bool = False,
) -> list[int]:
    """Top-``top`` SKI peaks widened by ±``widen`` (the default; yields {0,1,4,5,6} on BERT-base per the
    review). ``plateaus=True`` also counts a flat top (equal neighbours) as one peak."""
    score = ski_terms(entropy, grad, alpha, variant)["ski"]
    return band_from_peaks(score, local_maxima(score, boundary, plateaus), top, widen)


#: SKI with the gradient term from the layer-to-layer decay ratio G(l)/G(l+1).
ski_decay_rule = RULES.register("ski-decay")(functools.partial(ski_rule, variant="decay"))
