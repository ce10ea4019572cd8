"""Selection rules: profile -> chosen layers. A new rule is one function (or one object that
satisfies ``protocol.SelectionRule``) in its own file plus one registry line.

A rule's parameters and their defaults are written once: a function rule's in its signature (read
once by ``FunctionRule.of``), any other rule's in its ``parameters``; ``rule_parameters`` reads them
from there for everything that records or reports them."""
from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError
from ..registry import Registry
from ..validate import check_like
from .blocks import NEEDS_TEXT, RuleInputs
from .function_rule import FunctionRule
from .protocol import SelectionRule, check_rule
from .ski import band_from_peaks, local_maxima, ski_terms


class RuleRegistry(Registry[SelectionRule]):
    """``RULES``: registers a ``SelectionRule`` as it is, and a plain function
    ``fn(entropy, grad, **params) -> blocks`` as a ``FunctionRule``; either way the registered
    object satisfies the protocol (checked here, once), and the decorator returns what it was given."""

    def register(self, name: str) -> Callable[[Any], Any]:
        store = super().register(name)

        def deco(obj):
            plain_function = callable(obj) and not isinstance(obj, SelectionRule)
            rule = FunctionRule.of(name, obj) if plain_function else obj
            check_rule(name, rule)
            store(rule)
            return obj

        return deco


RULES = RuleRegistry("selection rule")


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
    """Every keyword parameter of ``rule`` with its value: the rule's defaults (its ``parameters``),
    overridden by ``given``; an unknown name, or a value unlike its default, is a one-line error."""
    defaults = dict(RULES.get(rule).parameters)
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"rule {rule!r} has no parameter {', '.join(map(repr, unknown))}; "
                          f"its parameters: {', '.join(f'{k}={v}' for k, v in defaults.items()) or 'none'}")
    for key, value in given.items():
        check_like(key, value, defaults[key], f"--param {key}")
    return {**defaults, **given}


def select_layers(rule: str, entropy, grad, **params) -> list[int]:
    """The blocks ``rule`` chooses on its own from the probe's two profiles (the diagnosis band, and
    each bootstrap resample's): only rules that read nothing else can run here."""
    chosen = RULES.get(rule)
    if not set(chosen.needs) <= {"backward"}:
        raise ConfigError(f"rule {rule!r} needs {NEEDS_TEXT[min(chosen.needs)]}, not only probe profiles; "
                          "use it through --rules (score_rules)")
    inputs = RuleInputs(len(entropy), profiles={"attention_entropy": list(entropy), "activation_grad_norm": list(grad)})
    return [int(i) for i in chosen.choose(inputs, **params)]
