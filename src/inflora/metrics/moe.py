"""Mixture-of-experts diagnostics: per-expert parameter-gradient norms, router load and router entropy.

A block whose router sends most tokens to a few experts trains those few (the rest see no gradient),
and a router whose per-token distribution is near one-hot passes little gradient back into its own
weights. Both are read over the probe's non-padding tokens:

- *load* of expert e: the share of (token, pick) pairs that pick e among the router's top-k
  (sums to 1 over experts; a balanced router gives 1/E each);
- *router entropy*: the mean over tokens of -Σ_e p log p with p = softmax(router logits), the
  distribution transformers' load-balancing loss reads (natural log; ``_norm`` divides by log E);
- *expert gradient norm*: ‖∇L‖ of each expert's slice (axis 0) of the fused expert parameters.

Pure functions, an accumulator of sums each, and one probe plugin, like ``entropy.py``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..errors import ArchitectureError
from ..models.moe import BlockMoe, spec_block_moes
from .accumulate import ProbePlugin, SumAccumulator


def expert_grad_norms(grads: Sequence[torch.Tensor | None], num_experts: int) -> torch.Tensor:
    """[E] L2 norms of each expert's slice of ``grads`` (tensors whose axis 0 is the expert),
    combined over the tensors; zeros where no gradient arrived (a frozen expert)."""
    sq = torch.zeros(num_experts, dtype=torch.float64)
    for g in grads:
        if g is not None:
            sq += torch.linalg.vector_norm(g.detach().float().flatten(1), dim=1).double().cpu().pow(2)
    return sq.sqrt()


def router_sums(logits: torch.Tensor, picks: torch.Tensor, token_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums over the non-padding tokens of ``logits`` [N, E] and ``picks`` [N, k] (the experts each
    token was sent to): picks per expert [E], tokens, Σ per-token router entropy, Σ router probability
    per expert [E]."""
    keep = token_mask.reshape(-1).bool().to(logits.device)
    if keep.numel() != logits.shape[0]:
        raise ArchitectureError(f"the router saw {logits.shape[0]} tokens but the batch has {keep.numel()}")
    logp = torch.log_softmax(logits.detach().float()[keep], dim=-1)
    p = logp.exp()
    e = logits.shape[-1]
    counts = torch.bincount(picks.detach()[keep].reshape(-1).long(), minlength=e)[:e]
    return {
        "picks": counts.double().cpu(),
        "tokens": torch.tensor(float(keep.sum()), dtype=torch.float64),
        "entropy_sum": (-(p * logp).sum()).double().cpu(),
        "prob_sum": p.sum(0).double().cpu(),
    }


def router_output(output, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [N, E], picks [N, k]) from a router's forward output: transformers' top-k routers
    return (logits, scores, indices); a plain Linear router returns logits (top-k taken here)."""
    if isinstance(output, (tuple, list)):
        logits = output[0]
        if len(output) >= 3 and torch.is_tensor(output[2]) and not output[2].is_floating_point():
            return logits.reshape(-1, logits.shape[-1]), output[2].reshape(logits.numel() // logits.shape[-1], -1)
    else:
        logits = output
    logits = logits.reshape(-1, logits.shape[-1])
    return logits, logits.topk(top_k, dim=-1).indices


class RouterLoad(SumAccumulator):
    fields = ("picks", "tokens", "entropy_sum", "prob_sum")

    def __init__(self, num_experts: int, top_k: int) -> None:
        super().__init__()
        self.num_experts, self.top_k = num_experts, top_k

    def update(self, logits: torch.Tensor, picks: torch.Tensor, token_mask: torch.Tensor) -> None:
        s = router_sums(logits, picks, token_mask)
        self.add(**{k: s[k] for k in self.fields})

    def compute_from(self, t: dict[str, torch.Tensor]) -> dict:
        tokens = float(t["tokens"].sum())
        if tokens == 0:
            nan = [math.nan] * self.num_experts
            return {
                "expert_load": nan,
                "router_entropy": math.nan,
                "router_entropy_norm": math.nan,
                "expert_load_max_ratio": math.nan,
                "dead_experts": 0,
                "router_prob": nan,
            }
        load = (t["picks"] / (tokens * self.top_k)).tolist()
        entropy = float(t["entropy_sum"].sum()) / tokens
        return {
            "expert_load": load,
            "router_entropy": entropy,
            "router_entropy_norm": entropy / math.log(self.num_experts),
            "expert_load_max_ratio": max(load) * self.num_experts,
            "dead_experts": sum(1 for v in t["picks"].tolist() if v == 0),
            "router_prob": (t["prob_sum"] / tokens).tolist(),
        }


class ExpertGradNorms(SumAccumulator):
    """Per-batch norms averaged over batches, like ``ParamGradNorm``; non-finite batches are counted."""

    fields = ("expert_norm_sum", "router_norm_sum", "batches", "nonfinite")

    def __init__(self, num_experts: int) -> None:
        super().__init__()
        self.num_experts = num_experts

    def update(self, expert_norms: torch.Tensor, router_norm: float) -> None:
        if bool(torch.isfinite(expert_norms).all()) and math.isfinite(router_norm):
            self.add(expert_norm_sum=expert_norms, router_norm_sum=router_norm, batches=1.0, nonfinite=0.0)
        else:
            self.add(expert_norm_sum=torch.zeros_like(expert_norms), router_norm_sum=0.0, batches=0.0, nonfinite=1.0)

    def compute_from(self, t: dict[str, torch.Tensor]) -> dict:
        b = float(t["batches"].sum())
        norms = (t["expert_norm_sum"] / b).tolist() if b else [math.nan] * self.num_experts
        if not isinstance(norms, list) or len(norms) != self.num_experts:
            norms = [math.nan] * self.num_experts
        return {
            "expert_grad_norm": norms,
            "router_grad_norm": float(t["router_norm_sum"].sum()) / b if b else math.nan,
            "expert_grad_nonfinite_batches": int(t["nonfinite"].sum()),
        }


class _MoeBlock:
    """The two accumulators of one MoE block; ``compute`` merges their rows."""

    def __init__(self, moe: BlockMoe) -> None:
        self.moe = moe
        self.load = RouterLoad(moe.num_experts, moe.top_k)
        self.grads = ExpertGradNorms(moe.num_experts)

    def compute(self, batches: list[int] | None = None) -> dict:
        return {**self.load.compute(batches), **self.grads.compute(batches)}


class MoeProbe(ProbePlugin):
    """Router load and entropy from a forward hook on each MoE block's router; per-expert and router
    gradient norms after each backward. Dense blocks report nothing."""

    name = "moe"

    def attach(self, ctx) -> None:
        self.blocks = [_MoeBlock(m) if m else None for m in spec_block_moes(ctx.inner, ctx.blocks)]
        for block in self.blocks:
            if block is not None:
                self.handles.append(block.moe.router.register_forward_hook(self._hook(ctx, block)))

    @staticmethod
    def _hook(ctx, block: _MoeBlock):
        seen = {"forward": -1}

        def hook(module, args, output):
            # once per model forward: a gradient-checkpointing recompute in backward calls the router again
            if ctx.active and seen["forward"] != ctx.forwards:
                seen["forward"] = ctx.forwards
                logits, picks = router_output(output, block.moe.top_k)
                block.load.update(logits, picks, ctx.attention_mask)

        return hook

    def after_backward(self, ctx) -> None:
        from .grad_norms import param_grad_norm

        for block in self.blocks:
            if block is not None:
                norms = expert_grad_norms([p.grad for p in block.moe.expert_tensors()], block.moe.num_experts)
                block.grads.update(norms, param_grad_norm(block.moe.router.parameters()))

    def accumulators(self) -> list[SumAccumulator]:
        return [a for b in self.blocks if b is not None for a in (b.load, b.grads)]

    def num_batches(self) -> int:
        return max((len(b.load) for b in self.blocks if b is not None), default=0)

    def layer_results(self, batches: list[int] | None = None) -> list[dict]:
        return [b.compute(batches) if b is not None else {} for b in self.blocks]
