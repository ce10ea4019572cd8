"""Accuracy on a split, in eval mode and without gradients."""
from __future__ import annotations

import torch

from ..data import EncodedSplit


@torch.no_grad()
def accuracy(model, split: EncodedSplit, batch_size: int = 128) -> float:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for batch in split.batches(batch_size, by_length=True):
        labels = batch.pop("labels").to(device)
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        correct += int((logits.argmax(-1) == labels).sum())
    model.train(was_training)
    return correct / len(split)
