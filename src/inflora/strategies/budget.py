"""Matched budgets for comparing selection rules (``selectors.md`` §10).

``layers=K``: every rule picks K blocks (``all`` keeps every block). ``params=N``: every rule's LoRA
rank is the largest r whose trainable LoRA parameters r·Σ(m + n) over its target matrices stay within
N, so rules that choose different blocks (or all of them) train equal counts within one rank step.
The classification head trains in every arm and is counted separately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from ..models.architectures import arch_for
from ..models.moe import moe_layout
from ..validate import LORA_DEFAULTS
from .lora import lora_config, parameter_hits

BUDGET_KINDS = ("layers", "params")


@dataclass(frozen=True)
class Budget:
    layers: int | None = None  # K blocks per rule; None: K = SKI's band size
    params: int | None = None  # N trainable LoRA parameters per rule (rank adjusted); None: the given rank
    targets: tuple[str, ...] | None = None  # LoRA targets counted (as --lora-targets); None: the family's q/k/v

    @property
    def kind(self) -> str:
        return "params" if self.params else "layers"

    @classmethod
    def parse(cls, text: str | None) -> "Budget":
        """``layers=K``, ``params=N`` or both, comma-separated (``N`` may be written 120000, 120k, 1.2M)."""
        if not text:
            return cls()
        values: dict[str, int] = {}
        for item in text.split(","):
            kind, sep, raw = item.strip().partition("=")
            if not sep or kind not in BUDGET_KINDS:
                raise ConfigError(f"--budget expects layers=K, params=N or both (layers=2,params=50000), got {text!r}")
            values[kind] = _whole(kind, raw)
        return cls(**values)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "layers": self.layers,
            "params": self.params,
            "targets": list(self.targets) if self.targets else None,
        }


def _whole(kind: str, raw: str) -> int:
    scale = {"k": 1e3, "m": 1e6}.get(raw[-1:].lower(), 1)
    try:
        value = float(raw[:-1] if scale != 1 else raw) * scale
    except ValueError:
        raise ConfigError(f"--budget {kind}= needs a whole number, got {raw!r}") from None
    if not math.isfinite(value) or value != int(value) or value < 1:
        raise ConfigError(f"--budget {kind}= needs a whole number >= 1, got {raw!r}")
    return int(value)


def lora_params_per_rank(model: nn.Module, layers: list[int], targets=None) -> int:
    """Trainable LoRA parameters per unit of rank on ``layers``: Σ (in + out) over the modules that the
    PEFT config built by ``lora_config`` (the one builder) would adapt, found with PEFT's own matcher."""
    from peft.tuners.tuners_utils import check_target_module_exists

    config = lora_config(arch_for(model), sorted(layers), r=1, targets=targets, dropout=0.0, moe=moe_layout(model))
    total = 0
    for name, module in model.named_modules():
        w = getattr(module, "weight", None)
        if name and w is not None and w.ndim == 2 and "lora_" not in name and check_target_module_exists(config, name):
            total += int(w.shape[0]) + int(w.shape[1])
    for target in config.target_parameters or ():  # fused experts [E, a, b]: rank r per expert, E·(a + b) per rank
        for name in parameter_hits(model, target):
            e, a, b = model.get_parameter(name).shape
            total += int(e) * (int(a) + int(b))
    return total


def rank_for_params(model: nn.Module, layers: list[int], n_params: int, targets=None) -> int:
    step = lora_params_per_rank(model, layers, targets)
    if step == 0:
        raise ConfigError(f"blocks {layers} hold no LoRA target matrix; check the LoRA targets")
    if n_params < step:
        raise ConfigError(
            f"a budget of {n_params:,} LoRA parameters is below one rank step ({step:,} on blocks "
            f"{layers}); no rank can meet it: give at least params={step}"
        )
    return n_params // step


def match_budget(
    model: nn.Module, selections: dict[str, list[int]], budget: Budget, r: int = LORA_DEFAULTS.r
) -> dict[str, dict]:
    """Per rule: its LoRA rank and trainable LoRA parameter count at ``budget``."""
    targets = list(budget.targets) if budget.targets else None
    out = {}
    for name, layers in selections.items():
        rank = rank_for_params(model, layers, budget.params, targets) if budget.params else r
        out[name] = {"r": rank, "lora_params": rank * lora_params_per_rank(model, layers, targets)}
    return out
