"""Representation profiles for ΔCKA: pooled block outputs on a fixed probe set."""

from __future__ import annotations

import torch

from ..data import EncodedSplit
from ..metrics import delta_cka
from ..probe import LayerProbe


@torch.no_grad()
def cka_features(model, split: EncodedSplit, pooling: str = "mean", batch_size: int = 128) -> list[torch.Tensor]:
    """[n, d] pooled features per block, model in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with LayerProbe(model, ["features"], features={"pooling": pooling}) as probe:
        for batch in split.batches(batch_size, by_length=True):
            batch.pop("labels", None)
            model(**{k: v.to(device) for k, v in batch.items()})
        feats = probe.plugins[0].matrices()
    model.train(was_training)
    return feats


def delta_cka_profile(before: list[torch.Tensor], after: list[torch.Tensor], k: int = 64) -> list[float]:
    return [delta_cka(b, a, k) for b, a in zip(before, after)]
