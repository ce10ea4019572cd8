"""Forgetting when the target task has its own head: score the source task with the source head.

After SST-2 → TREC the model ends with a new 6-class head, so "how much SST-2 did it lose?" can
only be asked of the *backbone*: the adapted backbone (LoRA merged) with the source checkpoint's
own head modules (the ``HEAD_MODULES`` every strategy trains: pooler and classifier for BERT)
put back. A backbone left unchanged therefore scores exactly the source model's accuracy.
"""

from __future__ import annotations

import copy

from torch import nn

from ..models import load_model
from ..strategies.lora import HEAD_MODULES


def head_paths(model: nn.Module) -> list[str]:
    """Dotted paths of the head modules (``bert.pooler``, ``classifier``), outermost only."""
    paths = [n for n, _ in model.named_modules() if n and n.split(".")[-1] in HEAD_MODULES]
    return [p for p in paths if not any(p.startswith(q + ".") for q in paths)]


def _plain(model: nn.Module) -> nn.Module:
    """A copy of the model without PEFT wrappers: LoRA merged, the trained modules_to_save kept."""
    twin = copy.deepcopy(model)
    return twin.merge_and_unload() if hasattr(twin, "merge_and_unload") else twin


def with_source_head(model: nn.Module, source: str) -> nn.Module:
    """A copy of ``model`` carrying the head of the classifier saved at ``source``."""
    twin = _plain(model)
    donor, _ = load_model(source, num_labels=None)
    device = next(twin.parameters()).device
    for path in head_paths(donor):
        parent, _, leaf = path.rpartition(".")
        setattr(twin.get_submodule(parent) if parent else twin, leaf, donor.get_submodule(path).to(device))
    twin.num_labels = twin.config.num_labels = donor.config.num_labels
    twin.config.id2label, twin.config.label2id = donor.config.id2label, donor.config.label2id
    return twin
