"""Fine-tuning strategies: which parameters train (LoRA via PEFT, partial unfreezing)."""

from .lora import LORA_DEFAULTS, head_modules, inject_lora, lora_config
from .registry import NEEDS_BAND, STRATEGIES, Applied, StrategyOptions, apply_strategy, count_parameters, random_band

__all__ = [
    "LORA_DEFAULTS",
    "NEEDS_BAND",
    "STRATEGIES",
    "Applied",
    "StrategyOptions",
    "apply_strategy",
    "count_parameters",
    "head_modules",
    "inject_lora",
    "lora_config",
    "random_band",
]
