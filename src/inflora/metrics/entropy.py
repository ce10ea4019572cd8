"""Attention entropy: a saturation proxy (a near one-hot row has a near-zero softmax Jacobian)."""
from __future__ import annotations

import math

import torch

from ..errors import ArchitectureError
from .accumulate import ProbePlugin, SumAccumulator


def valid_key_mask(attention_mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """[B, Tq, Tk] booleans: key s is a real token (and s <= t for causal models)."""
    keys = attention_mask.bool()[:, None, :]
    t = attention_mask.shape[1]
    valid = keys.expand(-1, t, -1)
    if causal:
        valid = valid & torch.ones(t, t, dtype=torch.bool, device=keys.device).tril()[None]
    return valid


def attention_entropy_sums(
    attn: torch.Tensor, attention_mask: torch.Tensor, causal: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-head sums over non-padding queries of -Σ_s a log a (natural log), and of the same divided
    by log(#valid keys); with the query counts each sum is over. Returns four [H] tensors:
    (raw_sum, raw_count, norm_sum, norm_count). Queries with one valid key have no normalised form."""
    a = attn.detach().float()
    keys = valid_key_mask(attention_mask, causal)  # [B, T, T]
    a = a * keys[:, None]  # masked keys hold ~0 mass already; make it exact
    ent = -torch.special.xlogy(a, a).sum(-1)  # [B, H, T]; xlogy(0, 0) = 0, one pass over the map
    queries = attention_mask.bool()  # [B, T]
    n_keys = keys.sum(-1).float()  # [B, T]
    normable = queries & (n_keys > 1)
    log_n = torch.where(normable, n_keys.clamp_min(2).log(), torch.ones_like(n_keys))
    q = queries[:, None].float()
    qn = normable[:, None].float()
    raw_sum = (ent * q).sum((0, 2))
    norm_sum = (ent / log_n[:, None] * qn).sum((0, 2))
    h = attn.shape[1]
    return raw_sum, q.sum().expand(h).clone(), norm_sum, qn.sum().expand(h).clone()


def attention_entropy(attn: torch.Tensor, attention_mask: torch.Tensor, causal: bool = False) -> dict[str, torch.Tensor]:
    """Mean entropy per head ([H]) over non-padding queries and examples, raw and normalised."""
    raw, n, norm, nn_ = attention_entropy_sums(attn, attention_mask, causal)
    return {"head_entropy": raw / n.clamp_min(1), "head_entropy_norm": norm / nn_.clamp_min(1)}


class AttentionEntropy(SumAccumulator):
    """Streams per-head entropy sums of one layer over batches."""

    fields = ("raw_sum", "raw_count", "norm_sum", "norm_count")

    def update(self, attn: torch.Tensor, attention_mask: torch.Tensor, causal: bool = False) -> None:
        self.add(*attention_entropy_sums(attn, attention_mask, causal))

    def compute_from(self, s: dict[str, torch.Tensor]) -> dict:
        head = s["raw_sum"] / s["raw_count"].clamp_min(1)
        head_norm = s["norm_sum"] / s["norm_count"].clamp_min(1)
        empty = float(s["raw_count"].sum()) == 0
        return {
            "attention_entropy": math.nan if empty else float(head.mean()),
            "attention_entropy_norm": math.nan if empty else float(head_norm.mean()),
            "head_entropy": [math.nan if empty else float(v) for v in head],
        }


class EntropyProbe(ProbePlugin):
    """Reduces each layer's attention map to per-head entropy sums inside that layer's hook."""

    name = "attention_entropy"

    def attach(self, ctx) -> None:
        self.layers = [AttentionEntropy() for _ in ctx.attention]
        for acc, module in zip(self.layers, ctx.attention):
            self.handles.append(module.register_forward_hook(self._hook(ctx, acc)))

    @staticmethod
    def _hook(ctx, acc: AttentionEntropy):
        def hook(module, args, output):
            if not ctx.active:
                return
            attn = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
            if attn is None or attn.dim() != 4:
                raise ArchitectureError(
                    f"{type(module).__name__} returned no attention map; the probe needs attn_implementation='eager'"
                )
            acc.update(attn, ctx.attention_mask, ctx.spec.causal)

        return hook
