"""Selection rules: profile -> chosen layers. A new rule is one function + one registry line.

A rule's parameters and their defaults are written once, in its signature; ``rule_parameters``
reads them from there for everything that records or reports them."""
from __future__ import annotations

import functools
import inspect
from typing import Callable

import numpy as np

from ..errors import ConfigError
from ..validate import check_like
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


#: SKI with the gradient term from the layer-to-layer decay ratio G(l)/G(l+1).
ski_decay_rule = RULES.register("ski-decay")(functools.partial(ski_rule, variant="decay"))


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


def rule_parameters(rule: str, given: dict | None = None) -> dict:
    """Every keyword parameter of ``rule`` with its value: the defaults of the rule's signature,
    overridden by ``given``. Rules that are not plain functions (block-score rules) take ``given`` as is."""
    fn = RULES.get(rule)
    given = dict(given or {})
    if not (inspect.isfunction(fn) or isinstance(fn, functools.partial)):
        return given
    defaults = {name: p.default for name, p in inspect.signature(fn).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"rule {rule!r} has no parameter {', '.join(map(repr, unknown))}; "
                          f"its parameters: {', '.join(f'{k}={v}' for k, v in defaults.items())}")
    for key, value in given.items():
        check_like(key, value, defaults[key], f"--param {key}")
    return {**defaults, **given}


def select_layers(rule: str, entropy, grad, **params) -> list[int]:
    fn = RULES.get(rule)
    try:
        return [int(i) for i in fn(entropy, grad, **params)]
    except TypeError as exc:
        raise ConfigError(f"bad parameters for rule {rule!r}: {exc}") from None
