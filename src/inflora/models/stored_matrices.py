"""The weight matrices of each block of a model in memory, as a checkpoint of it stores them.

The weight rules score matrices, and a scanned checkpoint (``weight_blocks``) and the same model in
memory must score the same ones. transformers 5 fuses some families' experts on load (Qwen3-MoE,
Mixtral: ``experts.gate_up_proj`` [E, 2I, H] from the checkpoint's ``experts.<e>.gate_proj`` and
``up_proj``) and splits them again on save; its own ``revert_weight_conversion`` (what
``save_pretrained`` calls) gives a block's tensors back in the checkpoint's layout, and
``weight_blocks.block_matrix_types`` picks the matrices from them by the same rule as the scan. A
family stored fused (gpt-oss) keeps its 3-D experts, read as one matrix per expert.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConfigError
from .architectures import get_blocks, hf_model
from .weight_blocks import block_matrix_types, split_block_name

SKIPPED = ("lora_", "original_module", "modules_to_save")  # PEFT's own tensors, not the model's


def stored_block_matrices(model: nn.Module) -> tuple[int, Callable[[int], dict[str, torch.Tensor]]]:
    """(number of blocks, ``fetch(i)`` -> block i's matrices by type). A fetch builds the block's
    tensors in the checkpoint's layout only when asked: converted experts are copies, so a caller
    holds one block's at a time (``select.spectra.Spectra.of_blocks``)."""
    inner = hf_model(model)
    blocks = get_blocks(inner)
    prefix = next(name for name, module in inner.named_modules() if module is blocks)

    def fetch(i: int) -> dict[str, torch.Tensor]:
        own = {
            f"{prefix}.{i}.{n.replace('.base_layer', '')}": p.detach()
            for n, p in blocks[i].named_parameters()
            if not any(s in n for s in SKIPPED)
        }
        meta = [n for n, p in own.items() if p.is_meta]
        if meta:
            raise ConfigError(
                f"the weight rules read weights, but the model's weights are on the meta "
                f"device (e.g. {meta[0]}); load the real weights first"
            )
        return _matrices(_as_stored(inner, own))

    return len(blocks), fetch


def _as_stored(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from transformers.core_model_loading import revert_weight_conversion

    with torch.no_grad():
        return revert_weight_conversion(model, tensors)


def _matrices(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The block's matrices by type: the path after the block index, read as the scan reads names
    (the checkpoint may name the block list differently: Qwen2-VL's ``model.language_model.layers``
    is stored as ``model.layers``)."""
    out = {}
    for name, w in tensors.items():
        split = split_block_name(name)
        if split is None:
            continue
        for type_, expert in block_matrix_types(split[2], tuple(w.shape)):
            out[type_] = w if expert is None else w[expert]
    return out
