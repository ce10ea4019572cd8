"""The projections discovery reads roles from: ``nn.Linear`` or transformers' ``Conv1D``, also
inside a PEFT LoRA layer; and the one sentence every discovery error ends with."""

from __future__ import annotations

from torch import nn

HOW_TO_OVERRIDE = "add an ArchSpec row for its config.model_type to inflora.models.architectures.ARCHITECTURES"


def is_projection(module: nn.Module) -> bool:
    """``nn.Linear`` or transformers' ``Conv1D`` (GPT-2 style, weight stored [in, out]), also
    inside a PEFT LoRA layer (its ``base_layer``; the adapter's own Linears are not projections)."""
    module = getattr(module, "base_layer", module)
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D" or _linear_like(module)


def _linear_like(module: nn.Module) -> bool:
    """A Linear that is not an ``nn.Linear`` subclass (I-BERT's ``QuantLinear``): a class named
    *Linear holding its own ``weight`` [out_features, in_features] and no projection inside it (a
    wrapper such as Moshi's keeps its ``nn.Linear`` one level down, and that one is the projection)."""
    weight = getattr(module, "weight", None)
    shape = (getattr(module, "out_features", None), getattr(module, "in_features", None))
    return (
        type(module).__name__.endswith("Linear")
        and isinstance(weight, nn.Parameter)
        and weight.dim() == 2
        and tuple(weight.shape) == shape
        and not any(isinstance(c, nn.Linear) for c in module.children())
    )


def projections(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) of every projection under ``root``, PEFT's adapter internals left out."""
    skip = ("base_layer", "lora_", "modules_to_save", "original_module")
    return [(n, m) for n, m in root.named_modules() if n and is_projection(m) and not any(s in n for s in skip)]


def io_features(module: nn.Module) -> tuple[int, int]:
    """(in, out) features of a projection, whichever way its weight is stored."""
    module = getattr(module, "base_layer", module)
    if isinstance(module, nn.Linear) or _linear_like(module):
        return module.in_features, module.out_features
    return module.weight.shape[0], module.weight.shape[1]  # Conv1D: [in, out]


def is_attention_class(module: nn.Module) -> bool:
    """A class named *Attention*, or *MLA (multi-head latent attention, LongCat-Flash)."""
    name = type(module).__name__
    return "Attention" in name or name.endswith("MLA")
