"""``lora-<rule>``: LoRA on the K blocks a peer selection rule chose (``selectors.md`` §10).

One strategy per ordered rule (``lora-kappa``, ``lora-spectrum-snr``, ``lora-top-grad`` ...): like
``lora-inflection``, but the blocks come from that rule's selection in a diagnosis run with
``--rules`` (``Diagnosis.rules``), so every arm of a comparison adapts the same number of blocks.
``lora-all`` and ``lora-random`` already exist, and ``lora-inflection`` is SKI's arm; a rule's
``arm`` (``select.ARMS``) says which of these trains it.
"""

from __future__ import annotations

from ..errors import ConfigError
from ..select import RULES


def arm_rules() -> list[str]:
    """Rules that need a ``lora-<rule>`` strategy made for them (``arm == "peer"``, ``select.ARMS``)."""
    return [n for n in RULES.names() if RULES.get(n).arm == "peer"]


def strategy_for_rule(rule: str) -> str:
    """The strategy that trains a rule's selection: lora-inflection for a band rule, else lora-<rule>."""
    return "lora-inflection" if RULES.get(rule).arm == "inflection" else f"lora-{rule}"


def rule_of(strategy: str) -> str | None:
    rule = strategy.removeprefix("lora-")
    return rule if strategy.startswith("lora-") and rule in arm_rules() else None


def rule_behind(strategy: str) -> str | None:
    """The inverse of ``strategy_for_rule`` for a LoRA band arm: lora-inflection is SKI's, lora-random
    and lora-all their own rules, lora-<rule> a peer rule; None for strategies that are not rule arms."""
    if strategy == "lora-inflection":
        return "ski"
    rule = strategy.removeprefix("lora-")
    return rule if rule in RULES and strategy_for_rule(rule) == strategy else None


def blocks_from_diagnosis(strategy: str, diagnosis) -> list[int]:
    """The blocks ``strategy`` trains according to a diagnosis (its band, or a rule's selection)."""
    rule = rule_of(strategy)
    if rule is None:
        return list(diagnosis.inflection_layers)
    chosen = (getattr(diagnosis, "rules", None) or {}).get("rules", {}).get(rule)
    if chosen is None:
        raise ConfigError(
            f"the diagnosis has no selection by rule {rule!r} (needed by {strategy}); "
            f"diagnose with --rules {rule}, or pass --layers"
        )
    return list(chosen["selected"])
