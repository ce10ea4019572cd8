"""Selection rules: profile -> chosen layers. A new rule is one function (or one object that
satisfies ``protocol.SelectionRule``) in its own file plus one registry line (``rule_registry.py``).

A rule's parameters and their defaults are written once: a function rule's in its signature (read
once by ``FunctionRule.of``), any other rule's in its ``parameters``; ``rule_parameters`` reads them
from there for everything that records or reports them."""

from __future__ import annotations

from ..errors import ConfigError
from ..validate import check_like
from .blocks import NEEDS_TEXT, RuleInputs
from .rule_registry import RULES, RuleRegistry  # noqa: F401  (re-exported)
from .ski_rule import ski_decay_rule, ski_rule  # noqa: F401  (registers; re-exported)
from .threshold_rule import threshold_rule  # noqa: F401  (registers; re-exported)
from .topk_rule import topk_rule  # noqa: F401  (registers; re-exported)


def rule_parameters(rule: str, given: dict | None = None) -> dict:
    """Every keyword parameter of ``rule`` with its value: the rule's defaults (its ``parameters``),
    overridden by ``given``; an unknown name, or a value unlike its default, is a one-line error."""
    defaults = dict(RULES.get(rule).parameters)
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(
            f"rule {rule!r} has no parameter {', '.join(map(repr, unknown))}; "
            f"its parameters: {', '.join(f'{k}={v}' for k, v in defaults.items()) or 'none'}"
        )
    for key, value in given.items():
        check_like(key, value, defaults[key], f"--param {key}")
    return {**defaults, **given}


def select_layers(rule: str, entropy, grad, **params) -> list[int]:
    """The blocks ``rule`` chooses on its own from the probe's two profiles (the diagnosis band, and
    each bootstrap resample's): only rules that read nothing else can run here."""
    chosen = RULES.get(rule)
    if not set(chosen.needs) <= {"backward"}:
        raise ConfigError(
            f"rule {rule!r} needs {NEEDS_TEXT[min(chosen.needs)]}, not only probe profiles; "
            "use it through --rules (score_rules)"
        )
    inputs = RuleInputs(len(entropy), profiles={"attention_entropy": list(entropy), "activation_grad_norm": list(grad)})
    return [int(i) for i in chosen.choose(inputs, **params)]
