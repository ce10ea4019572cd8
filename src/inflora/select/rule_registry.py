"""``RULES``, the one registry of selection rules: a rule is one file and one line,
``RULES.register("name")(rule)``; ``select/__init__.py`` imports each file once."""

from __future__ import annotations

from typing import Any, Callable

from ..registry import Registry
from .function_rule import FunctionRule
from .protocol import SelectionRule, check_rule


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
