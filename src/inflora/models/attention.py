"""The ``inflora_streaming`` attention implementation, registered through transformers' interface.

It is transformers' own ``sdpa_attention_forward`` (same kernel, same output, same gradients) plus
one optional side call: when a *sink* is registered for the attention module being run, the sink
receives the query and key (after rotary embeddings, before any GQA repeat), the mask exactly as
the model passed it, the scaling and SDPA's causal flag. The probe's entropy plugin registers sinks;
with none registered the function is plain SDPA. Masks are built by transformers' ``sdpa_mask``
(booleans, or None where SDPA's ``is_causal`` suffices), so the sink sees what SDPA sees.
"""

from __future__ import annotations

import logging
import weakref
from typing import Callable

from torch import nn

from ..errors import ArchitectureError, ConfigError
from .architectures import ARCHITECTURES, arch_for

log = logging.getLogger(__name__)

STREAMING = "inflora_streaming"
ATTENTION_MODES = ("streaming", "eager")

# attention module -> callable(query, key, attention_mask, scaling=..., causal=...)
SINKS: "weakref.WeakKeyDictionary[nn.Module, Callable]" = weakref.WeakKeyDictionary()


def streaming_attention_forward(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
):
    """transformers' SDPA attention, and the registered sink (if any) called beside it."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    out = sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
    )
    sink = SINKS.get(module)
    if sink is not None:
        if kwargs.get("position_bias") is not None:
            raise ArchitectureError(
                f"{type(module).__name__} adds a position bias that streaming entropy cannot read; use attention='eager'"
            )
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        # SDPA's own rule: the causal flag applies only without a mask and to more than one query
        causal = bool(causal) and attention_mask is None and query.shape[2] > 1
        sink(query, key, attention_mask, scaling=scaling, causal=causal)
    return out


def register_streaming_attention() -> None:
    """Make ``attn_implementation='inflora_streaming'`` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(STREAMING, streaming_attention_forward)
    AttentionMaskInterface.register(STREAMING, sdpa_mask)


def streaming_families() -> list[str]:
    return sorted(t for spec in ARCHITECTURES if spec.attention_interface for t in spec.model_types)


def check_attention_mode(mode: str) -> str:
    if mode not in ATTENTION_MODES:
        raise ConfigError(f"unknown attention mode {mode!r}; choose one of {', '.join(ATTENTION_MODES)}")
    return mode


def resolve_attention_mode(model: nn.Module, requested: str | None) -> str:
    """``streaming`` where the family's modeling code calls the attention interface, else ``eager``.

    ``requested=None`` chooses (the caller logs the eager fallback); ``'streaming'`` on a family
    that cannot use it is an error naming the families that can."""
    spec = arch_for(model)
    if requested is not None:
        check_attention_mode(requested)
    if spec.attention_interface:
        return requested or "streaming"
    if requested == "streaming":
        raise ConfigError(
            f"attention='streaming' needs a family whose attention goes through transformers' attention interface "
            f"with a plain masked softmax; {spec.family!r} does not ({spec.entropy_note or 'no attention interface'}; "
            f"use attention='eager'). Families that can: {', '.join(streaming_families())} and most discovered ones "
            "(inflora info --model M says)"
        )
    return "eager"


def switch_attention(model: nn.Module, mode: str, why: str) -> str | None:
    """Put ``model`` on the implementation ``mode`` needs; returns the previous one when it changed
    (for the caller to restore), None when nothing changed. Eager switches log why (as before)."""
    from .loading import attention_implementation, ensure_eager_attention

    previous = attention_implementation(model)
    if mode == "eager":
        if ensure_eager_attention(model, why):  # logs the switch and why
            return previous
        log.info("attention entropy is read from eager attention maps because %s", why)
        return None
    register_streaming_attention()
    if previous == STREAMING:
        return None
    model.set_attn_implementation(STREAMING)
    log.info("attention %r -> %r (SDPA with entropy streamed beside it) while %s", previous, STREAMING, why)
    return previous
