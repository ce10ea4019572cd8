"""Accuracy on a split, in eval mode and without gradients; under several processes each rank
scores its share and the predictions are gathered (accelerate drops the padding duplicates)."""

from __future__ import annotations

import torch

from ..data import EncodedSplit
from ..errors import TrainingError


@torch.no_grad()
def accuracy(model, split: EncodedSplit, batch_size: int = 128, accelerator=None) -> float:
    from .loaders import eval_loader

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = seen = 0
    batches = eval_loader(split, batch_size, accelerator) if accelerator else split.batches(batch_size, by_length=True)
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels")
        preds = model(**batch).logits.argmax(-1)
        if accelerator:
            preds, labels = accelerator.gather_for_metrics((preds, labels))
        correct += int((preds == labels).sum())
        seen += len(labels)
    model.train(was_training)
    if seen != len(split):
        raise TrainingError(f"evaluation counted {seen} examples of {len(split)}; the gather lost or duplicated some")
    return correct / len(split)


@torch.no_grad()
def correct_rows(model, split: EncodedSplit, batch_size: int = 128) -> list[int]:
    """1 where the prediction of row i is right, else 0, in the split's own row order (one process):
    what a paired bootstrap over test examples resamples."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows, right = split.row_order(by_length=True), [0] * len(split)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = {k: v.to(device) for k, v in split.collate_rows(chunk).items()}
        labels = batch.pop("labels")
        for row, ok in zip(chunk, (model(**batch).logits.argmax(-1) == labels).tolist()):
            right[row] = int(ok)
    model.train(was_training)
    return right
