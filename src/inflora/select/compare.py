"""Several rules side by side at one budget of K blocks: scores, selections and their overlap.

Every rule is asked the same way (``protocol.SelectionRule``): ``score(inputs).select(K)``. A
function rule's band is fitted to K by SKI (``function_rule.fit_band``), so every rule adapts the
same number of blocks.
"""

from __future__ import annotations

import itertools

from ..errors import ConfigError
from .blocks import NEEDS_TEXT, RuleInputs, check_k
from .function_rule import fit_band  # noqa: F401  (re-exported: where callers found it)
from .rule_registry import RULES

COST_ORDER = {"": 0, "weights": 1, "forward": 2, "backward": 3}


def rule_needs(name: str) -> set[str]:
    return set(RULES.get(name).needs)


def check_rules(names: list[str], available: set[str]) -> None:
    """Unknown rules and rules whose inputs are missing fail before any work is done."""
    if not names:
        raise ConfigError("give at least one rule")
    for name in names:
        missing = rule_needs(name) - available
        if missing:
            raise ConfigError(
                f"rule {name!r} needs {NEEDS_TEXT[min(missing)]}; "
                f"without data only these rules run: {', '.join(weight_only_rules())}"
            )


def weight_only_rules() -> list[str]:
    return [n for n in RULES.names() if rule_needs(n) <= {"weights"}]


def score_rules(names: list[str], inputs: RuleInputs, k: int, params: dict[str, dict] | None = None) -> dict:
    """``{rule: {scores, direction, selected, needs, seconds, meta}}`` for each rule at K blocks, plus
    ``overlap`` (pairwise Jaccard of the selections) and ``k``."""
    params = params or {}
    check_k(k, inputs.num_layers)
    rules = {}
    for name in names:
        scores = RULES.get(name).score(inputs, **params.get(name, {}))
        rules[name] = {**scores.to_dict(), "selected": scores.select(k), "needs": sorted(rule_needs(name))}
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
