"""Selection rules: profile -> chosen layers. A new rule is one function + one registry line."""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import ConfigError
from ..registry import Registry
from .ski import band_from_peaks, local_maxima, ski_terms

Rule = Callable[..., list[int]]
RULES: Registry[Rule] = Registry("selection rule")


@RULES.register("ski")
def ski_rule(entropy, grad, *, alpha: float = 0.5, top: int = 2, widen: int = 1, boundary: bool = True,
             variant: str = "level", plateaus: bool = False) -> list[int]:
    """Top-``top`` SKI peaks widened by ±``widen`` (the default; yields {0,1,4,5,6} on BERT-base per the
    review). ``plateaus=True`` also counts a flat top (equal neighbours) as one peak."""
    score = ski_terms(entropy, grad, alpha, variant)["ski"]
    return band_from_peaks(score, local_maxima(score, boundary, plateaus), top, widen)


@RULES.register("ski-decay")
def ski_decay_rule(entropy, grad, **kw) -> list[int]:
    """SKI with the gradient term from the layer-to-layer decay ratio G(l)/G(l+1)."""
    return ski_rule(entropy, grad, **{**kw, "variant": "decay"})


@RULES.register("topk")
def topk_rule(entropy, grad, *, k: int = 3, alpha: float = 0.5, variant: str = "level") -> list[int]:
    """The ``k`` layers with the highest SKI, peaks or not."""
    if k < 1:
        raise ConfigError(f"topk needs k >= 1, got {k}")
    score = ski_terms(entropy, grad, alpha, variant)["ski"]
    return sorted(np.argsort(-score, kind="stable")[:k].tolist())


@RULES.register("threshold")
def threshold_rule(entropy, grad, *, tau: float = 0.6, alpha: float = 0.5, variant: str = "level") -> list[int]:
    """Every layer with SKI >= ``tau`` (SKI lies in [0, 1])."""
    score = ski_terms(entropy, grad, alpha, variant)["ski"]
    return [i for i, s in enumerate(score) if s >= tau]


def select_layers(rule: str, entropy, grad, **params) -> list[int]:
    fn = RULES.get(rule)
    try:
        return [int(i) for i in fn(entropy, grad, **params)]
    except TypeError as exc:
        raise ConfigError(f"bad parameters for rule {rule!r}: {exc}") from None
