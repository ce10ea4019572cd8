"""``FunctionRule``: a rule written as one function ``fn(entropy, grad, **params) -> blocks``.

SKI and its variants (``ski``, ``ski-decay``, ``topk``, ``threshold``) are such functions of the
probe's attention-entropy and activation-gradient profiles; they choose a band of their own size.
A function's parameters and defaults are written once, in its signature (keyword-only arguments),
and read from there once, here. At a budget of K blocks the band is trimmed (lowest SKI first) or
extended (highest SKI outside it first) to K [ours], so every rule adapts the same number of blocks.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import ConfigError
from .blocks import BlockScores, RuleInputs, check_k
from .ski import ski_terms

SKI_KEYS = ("alpha", "variant")  # the parameters that shape the SKI score a band is fitted by


def keyword_defaults(fn: Callable) -> dict[str, Any]:
    """The keyword-only parameters of ``fn`` (a function or a ``functools.partial``) with their defaults."""
    return {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def fit_band(band: list[int], score, k: int) -> list[int]:
    """The band's blocks by descending score, then the others by descending score; the first k."""
    n = len(score)
    check_k(k, n)
    s = np.nan_to_num(np.asarray(score, dtype=float), nan=-np.inf)
    inside = sorted(band, key=lambda i: (-s[i], i))
    outside = sorted((i for i in range(n) if i not in band), key=lambda i: (-s[i], i))
    return sorted((inside + outside)[:k])


@dataclass(frozen=True)
class FunctionRule:
    """A ``SelectionRule`` around ``fn``; called like ``fn`` itself (``rule(entropy, grad, **params)``)."""

    name: str
    fn: Callable[..., list[int]]
    parameters: Mapping[str, Any]
    doc: str = ""
    needs: frozenset = frozenset({"backward"})  # the entropy and activation-gradient profiles
    arm: str = "inflection"
    spectrum_dtype: None = None

    @classmethod
    def of(cls, name: str, fn: Callable[..., list[int]]) -> "FunctionRule":
        doc = inspect.getdoc(fn) or ""
        return cls(name, fn, MappingProxyType(keyword_defaults(fn)), doc.split("\n\n")[0])

    def __call__(self, entropy, grad, **params) -> list[int]:
        return self.fn(entropy, grad, **params)

    def choose(self, inputs: RuleInputs, **params) -> list[int]:
        entropy, grad = self._profiles(inputs)
        try:
            return [int(i) for i in self.fn(entropy, grad, **params)]
        except TypeError as exc:
            raise ConfigError(f"bad parameters for rule {self.name!r}: {exc}") from None

    def score(self, inputs: RuleInputs, **params) -> BlockScores:
        """SKI per block, with the ``alpha``/``variant`` this rule's parameters give (SKI's own
        defaults for a rule without them), and the rule's band, which ``select(K)`` fits to K."""
        entropy, grad = self._profiles(inputs)
        params = {**self.parameters, **params}
        ski = ski_terms(entropy, grad, **{k: params[k] for k in SKI_KEYS if k in params})["ski"].tolist()
        band = self.choose(inputs, **params)
        meta = {"band": band, "needs": sorted(self.needs)}
        return BlockScores(self.name, ski, "high", {}, meta, picker=lambda k: fit_band(band, ski, k))

    def _profiles(self, inputs: RuleInputs) -> tuple[list[float], list[float]]:
        return inputs.profile("attention_entropy", self.name), inputs.profile("activation_grad_norm", self.name)
