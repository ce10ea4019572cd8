"""``--head-warmup``: fit the classification head on frozen features before diagnosing.

A fresh classifier is random, so the gradients a diagnosis measures are shaped by a random head; a
few steps of head-only training (the ``head`` strategy's parameters, AdamW) remove that part. The
backbone is untouched; which parameters require grad is restored afterwards.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError, TrainingError


def warm_head(model: nn.Module, batches: list[dict], steps: int, lr: float = 1e-3) -> dict:
    """``steps`` AdamW steps on the head only, cycling through ``batches``; returns the first and last
    losses. The model is left in the mode and ``requires_grad`` state it came in."""
    from .registry import _freeze_all_but_head

    if steps < 1:
        raise ConfigError(f"--head-warmup must be at least 1 step, got {steps}")
    if not batches:
        raise ConfigError("--head-warmup needs training batches")
    saved = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    _freeze_all_but_head(model)
    params = [p for p in model.parameters() if p.requires_grad]
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(params, lr=lr)
    losses = []
    model.train()
    try:
        for step in range(steps):
            batch = {k: v.to(device) for k, v in batches[step % len(batches)].items()}
            loss = model(**batch).loss
            if not math.isfinite(float(loss)):
                raise TrainingError(f"non-finite loss at head warm-up step {step}; lower the warm-up learning rate")
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    finally:
        model.train(was_training)
        for p, flag in saved.items():
            p.requires_grad = flag
    return {
        "steps": steps,
        "lr": lr,
        "first_loss": losses[0] if losses else math.nan,
        "last_loss": losses[-1] if losses else math.nan,
    }
