"""inflora: diagnose where gradient flow is suppressed in a pretrained Transformer, then adapt only there.

from inflora import diagnose, inject_lora
d = diagnose("minilm", "rotten_tomatoes")          # Diagnosis: .layers, .inflection_layers, .ski, .stability
peft_model = inject_lora(model, d.inflection_layers)
"""

from __future__ import annotations

import importlib

from .errors import InfloraError

__version__ = "0.1.0"

_LAZY = {
    "diagnose": "inflora.diagnosis",
    "Diagnosis": "inflora.diagnosis",
    "inject_lora": "inflora.strategies",
    "lora_config": "inflora.strategies",
    "finetune": "inflora.training",
    "FinetuneConfig": "inflora.training",
    "InflectionCallback": "inflora.training.callback",
    "load_task": "inflora.data",
    "load_file": "inflora.data",
    "load_any": "inflora.data",
    "decontaminate": "inflora.data",
    "load_model": "inflora.models",
}
__all__ = ["InfloraError", "__version__", *_LAZY]


def __getattr__(name: str):
    # Heavy imports (torch, transformers, peft) only when the attribute is used.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'inflora' has no attribute {name!r}")
