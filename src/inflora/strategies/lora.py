"""LoRA through Hugging Face PEFT on chosen blocks, with targets from the architecture table."""
from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from ..models.architectures import ARCHITECTURES, arch_for, num_layers

# Classification heads that must stay trainable in every strategy (PEFT ``modules_to_save``).
HEAD_MODULES = ("pooler", "pre_classifier", "classifier", "score")
LORA_DEFAULTS = {"r": 8, "alpha": 16, "dropout": 0.1}


def _spec(family: str):
    for spec in ARCHITECTURES:
        if spec.family == family or family in spec.model_types:
            return spec
    return arch_for(family)  # raises the table's error


def lora_config(
    family: str, layers: list[int] | None, *, r: int = 8, alpha: int = 16, dropout: float = 0.1,
    targets: list[str] | None = None, modules_to_save: list[str] | None = None, task_type: str | None = "SEQ_CLS",
):
    """A ``LoraConfig`` restricted to ``layers`` (None: every block). ``targets`` are paths inside a
    block (default q/k/v of the family); short names like ``query`` also work."""
    from peft import LoraConfig

    spec = _spec(family)
    if layers is not None:
        if not layers:
            raise ConfigError("LoRA needs at least one layer")
        if any(i < 0 for i in layers):
            raise ConfigError(f"layer indices must be >= 0, got {layers}")
    if r < 1:
        raise ConfigError(f"LoRA rank must be >= 1, got {r}")
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout,
        target_modules=list(targets or spec.lora_targets),
        layers_to_transform=sorted(set(layers)) if layers is not None else None,
        layers_pattern=spec.blocks.split(".")[-1] if layers is not None else None,
        fan_in_fan_out=spec.fused_qkv,
        modules_to_save=modules_to_save, task_type=task_type,
    )


def head_modules(model: nn.Module) -> list[str]:
    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    return [h for h in HEAD_MODULES if h in names]


def inject_lora(model: nn.Module, layers: list[int] | None, *, r: int = 8, alpha: int = 16, dropout: float = 0.1,
                targets: list[str] | None = None, train_head: bool = True):
    """Wrap ``model`` in a PEFT model with LoRA on ``layers`` only (None = all blocks); the
    classifier (and pooler) stay trainable. Returns the PEFT model."""
    from peft import get_peft_model

    spec = arch_for(model)
    n = num_layers(model)
    if layers is not None and any(i >= n for i in layers):
        raise ConfigError(f"layers {sorted(layers)} out of range for a {n}-layer model")
    is_cls = any(h in head_modules(model) for h in ("classifier", "score"))
    config = lora_config(
        spec.family, layers, r=r, alpha=alpha, dropout=dropout, targets=targets,
        modules_to_save=head_modules(model) if train_head and is_cls else None,
        task_type="SEQ_CLS" if is_cls else "CAUSAL_LM",
    )
    return get_peft_model(model, config)
