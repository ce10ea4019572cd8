"""Fine-tuning strategies: which parameters train (LoRA via PEFT, partial unfreezing)."""
from .lora import LORA_DEFAULTS, head_modules, inject_lora, lora_config

__all__ = ["LORA_DEFAULTS", "head_modules", "inject_lora", "lora_config"]
