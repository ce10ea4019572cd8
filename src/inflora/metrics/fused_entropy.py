"""Attention entropy from one fused attention call: H = L − scale·⟨q, O'⟩, exact.

With scores s = scale·q·kᵀ (masked keys removed), p = softmax(s) and L = log Σ exp(s) the row's
log-sum-exp, H = −Σ p log p = L − Σ p s = L − scale·⟨q, Σ p k⟩. ``Σ p k`` is the attention output
with the *keys* as values, O' = softmax(s)·K, and fused kernels return L beside their output. So one
call of the platform's kernel (CPU: the flash kernel; CUDA: the memory-efficient one, which takes a
mask) gives every row's entropy without a score matrix in memory and without a chunk loop.

The kernel runs in float32 whatever the model's dtype: L and scale·⟨q, O'⟩ are both of the order of
the scores and their difference is small, so half-precision inputs would cancel badly. A platform
without such a kernel, or one that refuses the shapes, returns None; the caller then takes the
chunked path (``streaming_entropy.chunk_entropy``) and it is logged once per reason.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)
_LOGGED: set[str] = set()


def _additive(valid: torch.Tensor | None) -> torch.Tensor | None:
    """A boolean key mask (True: the key takes part) as the float32 additive mask kernels take."""
    if valid is None:
        return None
    return torch.zeros(valid.shape, dtype=torch.float32, device=valid.device).masked_fill_(~valid, float("-inf"))


def _cpu_kernel(q, k, mask, causal: bool, scaling: float):
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, k, 0.0, causal, attn_mask=mask, scale=scaling
    )
    return out, lse


def _cuda_kernel(q, k, mask, causal: bool, scaling: float):
    if mask is not None:  # the kernel wants a bias of the full [B, H, Tq, S] shape
        mask = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, k, mask, True, 0.0, causal, scale=scaling)[
        :2
    ]
    return out, lse[..., : q.shape[2]]  # the log-sum-exp may be padded to a multiple of the kernel's tile


KERNELS = {"cpu": _cpu_kernel, "cuda": _cuda_kernel}


def fused_row_entropy(
    query: torch.Tensor, key: torch.Tensor, valid: torch.Tensor | None, *, scaling: float, causal: bool
) -> torch.Tensor | None:
    """Entropy (nats, float32) of every softmax row, ``[B, H, Tq]``, or None where no fused kernel
    takes these inputs. ``query`` [B, H, Tq, D]; ``key`` [B, Hkv, S, D] (grouped-query heads are
    repeated here); ``valid`` [B|1, H|1, Tq, S] booleans or None; ``causal`` SDPA's flag (no mask).
    Rows with no valid key come out as 0 (the caller counts only real queries)."""
    kernel = KERNELS.get(query.device.type)
    if kernel is None:
        _log_once(f"no fused attention kernel with a log-sum-exp on {query.device.type}")
        return None
    h, hkv = query.shape[1], key.shape[1]
    if query.shape[2] == 0 or key.shape[2] == 0:  # the CPU kernel divides by zero on empty inputs
        return torch.zeros(query.shape[:3], device=query.device)
    q = query.float().contiguous()
    k = key.float()
    k = (k.repeat_interleave(h // hkv, dim=1) if hkv != h else k).contiguous()
    try:
        out, lse = kernel(q, k, _additive(valid), causal, scaling)
    except (RuntimeError, NotImplementedError) as exc:
        _log_once(f"the fused attention kernel refused these inputs ({str(exc).splitlines()[0][:160]})")
        return None
    ent = lse.float() - scaling * (q * out.float()).sum(-1)
    return torch.where(lse == float("-inf"), 0.0, ent)  # NaN stays NaN: a non-finite batch must show


def _log_once(why: str) -> None:
    if why not in _LOGGED:
        _LOGGED.add(why)
        log.info("attention entropy: %s; using the chunked path", why)
