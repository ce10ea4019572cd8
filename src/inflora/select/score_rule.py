"""``ScoreRule``: a rule that gives every block a raw value and selects one end (the peer rules).

``profile_rule`` ranks blocks by one probe profile (the single-signal ablations); ``matrix_rule``
scores each block matrix's singular values and compares blocks within a module type. On its own
(``choose``) such a rule takes its top ``k`` blocks; at a budget (``score(...).select(K)``) its top K.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import ConfigError
from .blocks import BlockScores, RuleInputs, within_type_percentile


def _own_choice() -> dict[str, Any]:
    return {"k": 3}


@dataclass(frozen=True)
class ScoreRule:
    """A ``SelectionRule`` from ``score_fn(inputs) -> (raw, per_module, meta)`` and a ``direction``.

    ``parameters`` are those of the rule's own choice (``k``; ``seed`` for a seeded draw): at a
    budget, K and the run's seed decide, so ``score`` checks them but is not changed by them."""

    name: str
    needs: frozenset
    direction: str
    score_fn: Callable[[RuleInputs], tuple]
    doc: str = ""
    picker_fn: Callable[[RuleInputs], Callable[[int], list[int]]] | None = None  # rules without an order
    spectrum_dtype: str | None = None  # weight rules: the dtype of the singular values they read
    parameters: Mapping[str, Any] = field(default_factory=_own_choice)
    arm: str = "peer"

    def score(self, inputs: RuleInputs, **params) -> BlockScores:
        self._checked(params)
        t0 = time.perf_counter()
        raw, per_module, meta = self.score_fn(inputs)
        meta = {**meta, "seconds": time.perf_counter() - t0, "needs": sorted(self.needs)}
        picker = self.picker_fn(inputs) if self.picker_fn else None
        return BlockScores(self.name, [float(v) for v in raw], self.direction, per_module, meta, picker)

    def choose(self, inputs: RuleInputs, **params) -> list[int]:
        chosen = {**self.parameters, **self._checked(params)}
        if "seed" in chosen:
            inputs = dataclasses.replace(inputs, seed=chosen["seed"])
        return self.score(inputs).select(chosen["k"])

    def _checked(self, params: dict) -> dict:
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            raise ConfigError(
                f"bad parameters for rule {self.name!r}: no parameter {', '.join(map(repr, unknown))}; "
                f"its parameters: {', '.join(f'{k}={v}' for k, v in self.parameters.items())}"
            )
        return params


def profile_rule(name: str, key: str, direction: str, doc: str) -> ScoreRule:
    """A rule that ranks blocks by one probe profile (the single-signal SKI ablations, §7)."""
    needs = frozenset({"forward" if key == "io_cka" else "backward"})
    return ScoreRule(name, needs, direction, lambda inp: (inp.profile(key, name), {}, {"profile": key}), doc)


def matrix_rule(
    name: str, direction: str, metric: Callable[[np.ndarray, tuple[int, int]], float], dtype: str, doc: str
) -> ScoreRule:
    """A weight-only rule: ``metric(singular_values, shape)`` per block matrix, with the singular values
    computed in ``dtype`` (``spectra.singular_values``), then within-type percentiles."""

    def score(inp: RuleInputs):
        spectra = inp.weight_spectra(name)
        per_block, per_module = [], {}
        for i in range(spectra.num_blocks):
            row = {}
            for t in spectra.types(i):
                row[t] = float(metric(spectra.values(i, t, dtype), spectra.shapes[i][t]))
                per_module[f"{i}.{t}"] = row[t]
            per_block.append(row)
        return (
            within_type_percentile(per_block),
            per_module,
            {"n_svd": len(per_module), "aggregate": "within-type percentile"},
        )

    return ScoreRule(name, frozenset({"weights"}), direction, score, doc, spectrum_dtype=dtype)
