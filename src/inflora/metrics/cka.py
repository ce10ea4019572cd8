"""ΔCKA = 1 − CKA(before, after): where representations changed during fine-tuning.

Linear CKA (Kornblith et al. 2019) on centred features, computed in a PCA basis fitted on the
stacked [before; after] features so both live in the same low-dimensional coordinates.
"""

from __future__ import annotations

import torch

from ..models.architectures import first_tensor
from .accumulate import ProbePlugin, gather_batches


def _centre(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x - x.mean(0, keepdim=True)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """‖YᵀX‖_F² / (‖XᵀX‖_F ‖YᵀY‖_F) on centred [n, d] features; 1 for identical inputs."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same examples in both: {x.shape[0]} vs {y.shape[0]} rows")
    x, y = _centre(x), _centre(y)
    denom = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    if denom == 0:
        return float("nan")
    return float(torch.linalg.matrix_norm(y.T @ x) ** 2 / denom)


def shared_pca(x: torch.Tensor, y: torch.Tensor, k: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Project both onto the top-k principal axes of the stacked [x; y] (k ≤ min(n−1, d))."""
    n, d = x.shape
    k = max(1, min(k, n - 1, d))
    stacked = torch.cat([x, y]).double()
    mean = stacked.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(stacked - mean, full_matrices=False)
    basis = vh[:k].T
    return (x.double() - mean) @ basis, (y.double() - mean) @ basis


def delta_cka(before: torch.Tensor, after: torch.Tensor, k: int = 64) -> float:
    """1 − linear CKA of the two feature sets in their shared PCA basis."""
    xb, xa = shared_pca(before, after, k)
    return 1.0 - linear_cka(xb, xa)


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """[B, T, D] -> [B, D]: mean over non-padding tokens, the first ([CLS]) token, or the last
    non-padding token (``last``, for decoders; works for left and right padding)."""
    if pooling == "cls":
        return hidden[:, 0].detach().float()
    if pooling == "last":
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        last = (attention_mask.to(torch.long) * positions).argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last].detach().float()
    m = attention_mask.to(hidden.dtype)[..., None]
    return ((hidden * m).sum(1) / m.sum(1).clamp_min(1)).detach().float()


class FeatureProbe(ProbePlugin):
    """Pooled block outputs per layer, kept on CPU, for ΔCKA between two models on one probe set."""

    name = "features"

    def __init__(self, pooling: str = "mean") -> None:
        super().__init__()
        self.pooling = pooling
        self.features: list[list[torch.Tensor]] = []

    def attach(self, ctx) -> None:
        self.features = [[] for _ in ctx.blocks]
        for store, block in zip(self.features, ctx.blocks):

            def hook(module, args, output, store=store):
                if ctx.active:
                    store.append(pool_hidden(first_tensor(output), ctx.attention_mask, self.pooling).cpu())

            self.handles.append(block.register_forward_hook(hook))

    def num_batches(self) -> int:
        return max((len(f) for f in self.features), default=0)

    def gather(self) -> None:
        """Every rank's pooled features, rows in global batch order (the order of a single process)."""
        per_batch = gather_batches(list(zip(*self.features)))  # [batch][layer]
        self.features = [[b[i] for b in per_batch] for i in range(len(self.features))]

    def matrices(self) -> list[torch.Tensor]:
        return [torch.cat(f) if f else torch.empty(0) for f in self.features]

    def layer_results(self, batches=None) -> list[dict]:
        return [{} for _ in self.features]


def io_cka(features: list[torch.Tensor]) -> list[float]:
    """CKA(input, output) of each block from ``features[0]`` = block-0 input and ``features[l + 1]`` =
    block l's output, all [n, d] on the same examples (layer-wise LoRA with CKA, ``selectors.md`` §4)."""
    return [linear_cka(a, b) for a, b in zip(features[:-1], features[1:])]


class BlockIOProbe(FeatureProbe):
    """Pooled features of block 0's input and of every block's output, for ``io_cka`` per layer.

    Pooling ``last`` (last non-padding token, decoders, as the reference), ``mean`` (encoders [ours]:
    [CLS] at block 0's input is the same vector for every example, so its CKA is 0/0) or ``cls``."""

    name = "block_io"

    def attach(self, ctx) -> None:
        self.inputs: list[torch.Tensor] = []

        def pre_hook(module, args, kwargs):
            if ctx.active:
                hidden = args[0] if args else kwargs["hidden_states"]
                self.inputs.append(pool_hidden(hidden, ctx.attention_mask, self.pooling).cpu())

        self.handles.append(ctx.blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
        super().attach(ctx)

    def gather(self) -> None:
        self.inputs = gather_batches(self.inputs)
        super().gather()

    def layer_results(self, batches=None) -> list[dict]:
        chosen = range(len(self.inputs)) if batches is None else batches
        if not self.inputs:
            return [{} for _ in self.features]
        stacked = [torch.cat([self.inputs[i] for i in chosen])]
        stacked += [torch.cat([f[i] for i in chosen]) for f in self.features]
        return [{"io_cka": v} for v in io_cka(stacked)]
