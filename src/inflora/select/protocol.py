"""What a selection rule is: the one protocol every entry of ``RULES`` satisfies.

As with PEFT's tuner registry or a torchmetrics ``Metric``, callers ask a rule what it needs, which
parameters it takes and how it scores and chooses blocks, never what kind of object it is. Two
shapes are built in: ``ScoreRule`` (a raw per-block value and the end that is selected: the peer
rules, ``score_rule.py``) and ``FunctionRule`` (one function of the entropy and gradient profiles
that returns a band: SKI and its variants, ``function_rule.py``). Any other object with these
members registers as well; ``check_rule`` says at registration what one lacks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .blocks import BlockScores, RuleInputs

#: What a rule may read, cheapest first (``compare.COST_ORDER``); an empty set: nothing at all.
NEEDS = ("weights", "forward", "backward")

#: How ``compare`` trains a rule's K blocks (``strategies.rule_arms``).
ARMS = {
    "inflection": "lora-inflection, on the band the diagnosis chose with this rule (fitted to K)",
    "peer": "a lora-<rule> strategy made for it, on the blocks the diagnosis recorded (--rules)",
    "own": "its own lora-<rule> strategy, which chooses the blocks itself (lora-all, lora-random)",
}


@runtime_checkable
class SelectionRule(Protocol):
    """A registered selection rule.

    ``needs``: a subset of ``NEEDS``. ``parameters``: every keyword parameter with its default (the
    one place a rule's defaults are read from). ``arm``: a key of ``ARMS``. ``spectrum_dtype``: the
    dtype of the singular values it reads from the weights (None: it reads none), so a weight scan
    computes each spectrum once. ``score(inputs, **params)``: every block's value and, through
    ``BlockScores.select(k)``, the rule's K blocks at a budget. ``choose(inputs, **params)``: the
    blocks the rule picks on its own (its band, or its top ``k``)."""

    name: str
    needs: frozenset[str]
    parameters: Mapping[str, Any]
    arm: str
    spectrum_dtype: str | None
    doc: str

    def score(self, inputs: "RuleInputs", **params) -> "BlockScores": ...

    def choose(self, inputs: "RuleInputs", **params) -> list[int]: ...


def check_rule(name: str, rule: Any) -> None:
    """Refuse, at registration, an object that is not a rule: a programming error, not a user's."""
    if not isinstance(rule, SelectionRule):
        missing = [
            m
            for m in ("name", "needs", "parameters", "arm", "spectrum_dtype", "doc", "score", "choose")
            if not hasattr(rule, m)
        ]
        raise TypeError(f"selection rule {name!r} lacks {', '.join(missing)} (see select/protocol.py)")
    if rule.name != name:
        raise TypeError(f"selection rule registered as {name!r} calls itself {rule.name!r}")
    if not set(rule.needs) <= set(NEEDS):
        raise TypeError(f"selection rule {name!r} needs {sorted(rule.needs)}; each must be one of {', '.join(NEEDS)}")
    if rule.arm not in ARMS:
        raise TypeError(f"selection rule {name!r} has arm {rule.arm!r}; choose one of {', '.join(ARMS)}")
