"""Which output features of a fused q/k/v projection are the query, the key and the value.

The fused output is read as ``groups`` groups of head-sized slots, each group holding the same
pattern of roles. Three layouts occur (each checked against the query, key and value the model
computes, tests/test_qkv_layout.py):

- ``[q|k|v]`` blocks, one group: Phi-3 ``qkv_proj``, GPT-2 ``c_attn`` (Conv1D: columns, not rows),
  Falcon multi-query (``[q × H | k | v]``), Qwen2-VL's vision ``qkv``, and the default for any other
  fused projection;
- per head ``[q_h, k_h, v_h]``: GPT-NeoX and Bloom ``query_key_value``, Falcon without multi-query;
- per key/value group ``[q × H/G, k, v]``: Falcon's new decoder architecture (Falcon-40B/180B).

The head counts and head size are read from the attention module (falling back to the config);
the layout kind is known per family (the three above), and for other families the ``[q|k|v]``
order is assumed, which ``source`` says. A fused width that does not fit the heads gives no layout.
"""

from __future__ import annotations

from torch import nn

from .projections import io_features
from .spec import QKVLayout

PER_HEAD = ("gpt_neox", "bloom")


def fused_qkv_layout(
    attention: nn.Module, config, model_type: str, out_features: int, conv1d: bool
) -> QKVLayout | None:
    heads, kv_heads, head_dim = head_counts(attention, config)
    if not heads or not head_dim:
        return None
    kind, groups, pattern = _pattern(model_type, config, heads, kv_heads)
    layout = QKVLayout(
        axis="columns" if conv1d else "rows", head_dim=head_dim, groups=groups, pattern=pattern, source=kind
    )
    return layout if layout.width == out_features else None


def _pattern(model_type: str, config, heads: int, kv_heads: int) -> tuple[str, int, tuple[str, ...]]:
    if model_type == "falcon" and getattr(config, "new_decoder_architecture", False):
        return "falcon new architecture: per key/value group", kv_heads, ("q",) * (heads // kv_heads) + ("k", "v")
    if model_type in PER_HEAD or (model_type == "falcon" and not getattr(config, "multi_query", False)):
        return f"{model_type}: interleaved per head", heads, ("q", "k", "v")
    name = "falcon (multi-query)" if model_type == "falcon" else model_type
    known = model_type in ("phi3", "gpt2", "falcon", "qwen2_vl")
    source = f"{name}: [q|k|v] blocks" + ("" if known else " (assumed: the common order, not verified)")
    return source, 1, ("q",) * heads + ("k",) * kv_heads + ("v",) * kv_heads


def head_counts(attention: nn.Module, config) -> tuple[int | None, int | None, int | None]:
    """(query heads, key/value heads, head size): the attention module's own numbers, else the config's."""
    heads = _first(attention, config, ("num_heads", "num_attention_heads", "n_head"))
    kv = _first(attention, config, ("num_kv_heads", "num_key_value_heads")) or heads
    head_dim = _first(attention, config, ("head_dim", "head_size"))
    if head_dim is None and heads:
        hidden = _first(attention, config, ("hidden_size", "embed_dim", "n_embd"))
        head_dim = hidden // heads if hidden else None
    return heads, kv, head_dim


def _first(attention: nn.Module, config, names: tuple[str, ...]) -> int | None:
    for source in (attention, config):
        for name in names:
            value = getattr(source, name, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def qkv_layout_of(model: nn.Module, block: nn.Module, query: str, tower: str) -> QKVLayout | None:
    """The layout of ``block``'s fused projection at ``query`` (relative to the block), read with the
    heads of the module holding it and the config of ``tower``."""
    proj = block.get_submodule(query)
    holder = block.get_submodule(query.rpartition(".")[0]) if "." in query else block
    config = model.config
    tower_config = getattr(config, "vision_config", None) if tower == "vision" else config.get_text_config()
    conv1d = type(getattr(proj, "base_layer", proj)).__name__ == "Conv1D"
    return fused_qkv_layout(
        holder, tower_config or config, getattr(config, "model_type", ""), io_features(proj)[1], conv1d
    )
