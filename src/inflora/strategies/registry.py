"""Fine-tuning strategies: which parameters train. One function per strategy, one registry line.

Each strategy takes the loaded model and returns ``Applied`` (the possibly wrapped model, the
blocks it adapts, and its default learning rate). The classifier and pooler train in every strategy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..errors import ConfigError
from ..models.architectures import get_blocks, num_layers, parameter_groups
from ..registry import Registry
from ..select import random_blocks
from ..validate import LORA_DEFAULTS
from .lisa import LisaSchedule
from .lora import head_modules, inject_lora
from .rule_arms import arm_rules


@dataclass
class StrategyOptions:
    layers: list[int] | None = None  # the inflection band (lora-inflection, size for lora-random)
    k: int = 2  # shallow: top-k blocks
    r: int = LORA_DEFAULTS.r
    alpha: int = LORA_DEFAULTS.alpha
    dropout: float = LORA_DEFAULTS.dropout
    targets: list[str] | None = None
    seed: int = 42
    extra: dict = field(default_factory=dict)


@dataclass
class Applied:
    model: nn.Module
    layers: list[int]
    lr: float
    schedule: object | None = None  # a training-time rule (lisa): ``before_step(step)`` each step


STRATEGIES: Registry = Registry("strategy")
NEEDS_BAND = {"lora-inflection", "lora-random"}


def _freeze_all_but_head(model: nn.Module) -> None:
    """Train only the head: the classifier (and pooler); for a causal LM, the LM head (the output
    embedding, which GPT-2 ties to the input embedding)."""
    heads = set(head_modules(model))
    for name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            p.requires_grad = name.split(".")[-1] in heads or any(f".{h}." in f".{name}." for h in heads)
    if not heads and getattr(model, "get_output_embeddings", lambda: None)() is not None:
        for p in model.get_output_embeddings().parameters():
            p.requires_grad = True


@STRATEGIES.register("full")
def full(model: nn.Module, opt: StrategyOptions) -> Applied:
    for p in model.parameters():
        p.requires_grad = True
    return Applied(model, list(range(num_layers(model))), 2e-5)


@STRATEGIES.register("head")
def head(model: nn.Module, opt: StrategyOptions) -> Applied:
    _freeze_all_but_head(model)
    return Applied(model, [], 1e-3)


@STRATEGIES.register("shallow")
def shallow(model: nn.Module, opt: StrategyOptions) -> Applied:
    n = num_layers(model)
    if not 1 <= opt.k <= n:
        raise ConfigError(f"shallow unfreezing needs 1 <= k <= {n}, got k={opt.k}")
    _freeze_all_but_head(model)
    top = list(range(n - opt.k, n))
    for i in top:
        for p in get_blocks(model)[i].parameters():
            p.requires_grad = True
    return Applied(model, top, 2e-5)


def _lora(model: nn.Module, layers: list[int] | None, opt: StrategyOptions) -> Applied:
    peft_model = inject_lora(model, layers, r=opt.r, alpha=opt.alpha, dropout=opt.dropout, targets=opt.targets)
    return Applied(peft_model, list(range(num_layers(model))) if layers is None else sorted(layers), 5e-4)


@STRATEGIES.register("lora-all")
def lora_all(model: nn.Module, opt: StrategyOptions) -> Applied:
    return _lora(model, None, opt)


@STRATEGIES.register("lora-inflection")
def lora_inflection(model: nn.Module, opt: StrategyOptions) -> Applied:
    if not opt.layers:
        raise ConfigError("lora-inflection needs a band: --diagnosis FILE, --layers 0,1,4, or let finetune diagnose")
    return _lora(model, opt.layers, opt)


def random_band(n_layers: int, size: int, seed: int) -> list[int]:
    """A seeded random set of ``size`` blocks: the control for 'does the choice of layers matter'
    (the ``random`` selection rule's draw)."""
    return random_blocks(n_layers, size, seed)


@STRATEGIES.register("lora-random")
def lora_random(model: nn.Module, opt: StrategyOptions) -> Applied:
    if not opt.layers:
        raise ConfigError("lora-random needs the size of the inflection band: give --diagnosis or --layers")
    return _lora(model, random_band(num_layers(model), len(opt.layers), opt.seed), opt)


@STRATEGIES.register("lisa")
def lisa(model: nn.Module, opt: StrategyOptions) -> Applied:
    """K (``--k``) random blocks train fully, resampled every ``lisa_interval`` steps; embeddings and head
    always train. Everything is trainable now so the optimizer holds every block (strategies/lisa.py)."""
    schedule = LisaSchedule(model, opt.k, int(opt.extra.get("lisa_interval", 20)), opt.seed)
    for p in model.parameters():
        p.requires_grad = True
    return Applied(model, [], 2e-5, schedule)


def _rule_arm(rule: str):
    def arm(model: nn.Module, opt: StrategyOptions) -> Applied:
        if not opt.layers:
            raise ConfigError(
                f"lora-{rule} needs the blocks rule {rule!r} chose: --diagnosis FILE from "
                f"`inflora diagnose --rules {rule}`, or --layers"
            )
        return _lora(model, opt.layers, opt)

    arm.__doc__ = f"LoRA on the blocks chosen by rule {rule!r}."
    return arm


for _rule in arm_rules():  # lora-kappa, lora-spectrum-snr, ... (strategies/rule_arms.py)
    STRATEGIES.register(f"lora-{_rule}")(_rule_arm(_rule))
    NEEDS_BAND.add(f"lora-{_rule}")


def apply_strategy(name: str, model: nn.Module, opt: StrategyOptions | None = None) -> Applied:
    return STRATEGIES.get(name)(model, opt or StrategyOptions())


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total), each shared tensor counted once. PEFT keeps a frozen ``original_module``
    beside each trainable ``modules_to_save`` copy (classifier, pooler); only the copy takes part in
    the forward pass, so the original is left out of the total."""
    seen, trainable, total = set(), 0, 0
    for name, p in model.named_parameters():
        if id(p) in seen or ".original_module." in f".{name}":
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


__all__ = [
    "Applied",
    "NEEDS_BAND",
    "STRATEGIES",
    "StrategyOptions",
    "apply_strategy",
    "count_parameters",
    "parameter_groups",
    "random_band",
]
