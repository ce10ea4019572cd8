"""Several rules side by side at one budget of K blocks: scores, selections and their overlap.

The SKI-family rules (``ski``, ``ski-decay``, ``topk``, ``threshold``) choose a band of their own
size; at a budget of K blocks their band is trimmed (lowest SKI first) or extended (highest SKI
outside the band first) to K [ours], so every rule adapts the same number of blocks.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..errors import ConfigError
from .blocks import BlockScores, RuleInputs, ScoreRule, check_k
from .rules import RULES, rule_parameters, select_layers
from .ski import ski_terms

COST_ORDER = {"": 0, "weights": 1, "forward": 2, "backward": 3}


def rule_needs(name: str) -> set[str]:
    rule = RULES.get(name)
    return set(rule.needs) if isinstance(rule, ScoreRule) else {"backward"}


def check_rules(names: list[str], available: set[str]) -> None:
    """Unknown rules and rules whose inputs are missing fail before any work is done."""
    if not names:
        raise ConfigError("give at least one rule")
    for name in names:
        missing = rule_needs(name) - available
        if missing:
            from .blocks import NEEDS_TEXT

            raise ConfigError(f"rule {name!r} needs {NEEDS_TEXT[min(missing)]}; "
                              f"without data only these rules run: {', '.join(weight_only_rules())}")


def weight_only_rules() -> list[str]:
    return [n for n in RULES.names() if rule_needs(n) <= {"weights"}]


def fit_band(band: list[int], score, k: int) -> list[int]:
    """The band's blocks by descending score, then the others by descending score; the first k."""
    n = len(score)
    check_k(k, n)
    s = np.nan_to_num(np.asarray(score, dtype=float), nan=-np.inf)
    inside = sorted(band, key=lambda i: (-s[i], i))
    outside = sorted((i for i in range(n) if i not in band), key=lambda i: (-s[i], i))
    return sorted((inside + outside)[:k])


def band_rule_scores(name: str, inputs: RuleInputs, params: dict) -> tuple[BlockScores, list[int]]:
    entropy = inputs.profile("attention_entropy", name)
    grad = inputs.profile("activation_grad_norm", name)
    params = rule_parameters(name, params)
    ski = ski_terms(entropy, grad, params["alpha"], params["variant"])["ski"]
    band = select_layers(name, entropy, grad, **params)
    return BlockScores(name, ski.tolist(), "high", {}, {"band": band, "needs": ["backward"]}), band


def score_rules(names: list[str], inputs: RuleInputs, k: int, params: dict[str, dict] | None = None) -> dict:
    """``{rule: {scores, direction, selected, needs, seconds, meta}}`` for each rule at K blocks, plus
    ``overlap`` (pairwise Jaccard of the selections) and ``k``."""
    params = params or {}
    check_k(k, inputs.num_layers)
    rules = {}
    for name in names:
        rule = RULES.get(name)
        if isinstance(rule, ScoreRule):
            scores = rule.score(inputs)
            selected = scores.select(k)
        else:
            scores, band = band_rule_scores(name, inputs, params.get(name, {}))
            selected = fit_band(band, scores.raw, k)
        rules[name] = {**scores.to_dict(), "selected": selected, "needs": sorted(rule_needs(name))}
    return {"k": k, "rules": rules, "overlap": overlap({n: r["selected"] for n, r in rules.items()})}


def jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def overlap(selections: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    names = list(selections)
    out = {a: {a: 1.0} for a in names}
    for a, b in itertools.combinations(names, 2):
        out[a][b] = out[b][a] = jaccard(selections[a], selections[b])
    return out


def cheapest(names: list[str]) -> str:
    """The rule with the cheapest inputs (nothing < weights < forward < backward), first in order."""
    return min(names, key=lambda n: max(COST_ORDER[x] for x in rule_needs(n) | {""}))
