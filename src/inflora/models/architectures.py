"""Where a model keeps its blocks, attention and projections: discovered, or overridden here.

``arch_for(model)`` derives the ``ArchSpec`` from the model itself (``discovery.py``); the table
below holds overrides, rows for families whose layout discovery cannot read (or reads
differently from what was verified), and is the record of what each listed family was verified
with (``tests/test_discovery.py`` checks discovery agrees with every row). Paths are dotted
attribute paths; ``blocks`` and ``embeddings`` are relative to ``model.base_model`` and the
others relative to one block (see ``spec.py``).
"""

from __future__ import annotations

import weakref
from dataclasses import replace

from torch import nn

from ..errors import ArchitectureError
from .spec import FFN, ArchSpec, MoESpec  # noqa: F401  (re-exported)


_BERT_LIKE = dict(
    blocks="encoder.layer",
    attention="attention.self",
    query="attention.self.query",
    key="attention.self.key",
    value="attention.self.value",
    output="attention.output.dense",
    embeddings=("embeddings",),
    ffn_up="intermediate.dense",
    ffn_down="output.dense",
)
_LLAMA_LIKE = dict(
    blocks="layers",
    attention="self_attn",
    query="self_attn.q_proj",
    key="self_attn.k_proj",
    value="self_attn.v_proj",
    output="self_attn.o_proj",
    embeddings=("embed_tokens",),
    causal=True,
    ffn_gate="mlp.gate_proj",
    ffn_up="mlp.up_proj",
    ffn_down="mlp.down_proj",
)


ARCHITECTURES: tuple[ArchSpec, ...] = (
    ArchSpec("bert", ("bert",), **_BERT_LIKE),
    ArchSpec("roberta", ("roberta", "xlm-roberta"), **_BERT_LIKE),
    ArchSpec("electra", ("electra",), **_BERT_LIKE),
    ArchSpec(
        "distilbert",
        ("distilbert",),
        blocks="transformer.layer",
        attention="attention",
        query="attention.q_lin",
        key="attention.k_lin",
        value="attention.v_lin",
        output="attention.out_lin",
        embeddings=("embeddings",),
        ffn_up="ffn.lin1",
        ffn_down="ffn.lin2",
    ),
    ArchSpec(
        "mpnet",
        ("mpnet",),
        blocks="encoder.layer",
        attention="attention.attn",
        query="attention.attn.q",
        key="attention.attn.k",
        value="attention.attn.v",
        output="attention.attn.o",
        embeddings=("embeddings",),
        maps_need_output_attentions=True,
        ffn_up="intermediate.dense",
        ffn_down="output.dense",
        attention_interface=False,
        entropy_note=(
            "its attention code does not go through transformers' attention interface (relative position "
            "bias); entropy read from eager maps"
        ),
    ),
    ArchSpec(
        "gpt2",
        ("gpt2",),
        blocks="h",
        attention="attn",
        query="attn.c_attn",
        key="attn.c_attn",
        value="attn.c_attn",
        output="attn.c_proj",
        embeddings=("wte", "wpe"),
        causal=True,
        fused_qkv=True,
        ffn_up="mlp.c_fc",
        ffn_down="mlp.c_proj",
        fused_conv1d=True,
    ),
    ArchSpec("llama", ("llama", "mistral", "qwen2"), **_LLAMA_LIKE),
)

_BY_TYPE = {t: spec for spec in ARCHITECTURES for t in spec.model_types}


def supported_model_types() -> list[str]:
    return sorted(_BY_TYPE)


_SPECS: "weakref.WeakKeyDictionary[nn.Module, ArchSpec]" = weakref.WeakKeyDictionary()
_TOWERS: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()


def arch_for(model_or_type: nn.Module | str) -> ArchSpec:
    """The ``ArchSpec`` of a model: its table row where it has one (the verified override), else
    discovered from the model (cached per model). A string is a ``config.model_type`` or a family
    (``qwen2_vl:vision`` names a tower), discovered on a tiny model of that type built on the meta device."""
    if isinstance(model_or_type, str):
        return spec_for_type(model_or_type)
    inner = hf_model(model_or_type)
    spec = _SPECS.get(inner)
    if spec is None:
        spec = _SPECS[inner] = _spec_of(inner, _TOWERS.get(inner, "language"))
    return spec


def _spec_of(model: nn.Module, tower: str) -> ArchSpec:
    from .discovery import discover

    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise ArchitectureError(
            f"unsupported architecture {type(model).__name__!r}: not a transformers model "
            "(no config.model_type), so its blocks cannot be discovered"
        )
    if tower == "language" and model_type in _BY_TYPE:
        return _with_qkv_layout(model, _BY_TYPE[model_type])
    return discover(model, base_model(model), tower)


def _with_qkv_layout(model: nn.Module, row: ArchSpec) -> ArchSpec:
    """A table row that fuses q/k/v, with the fused weight's layout read from this model."""
    if not row.fused_qkv:
        return row
    from .qkv_layout import qkv_layout_of

    block = get_submodule(base_model(model), row.blocks)[0]
    return replace(row, qkv_layout=qkv_layout_of(model, block, row.query, "language"))


def set_tower(model: nn.Module, tower: str) -> ArchSpec:
    """Choose which block list of a multimodal model (``language`` or ``vision``) every metric,
    band and LoRA config names; an ``ArchitectureError`` when the model has no such tower."""
    inner = hf_model(model)
    spec = _spec_of(inner, tower)
    _TOWERS[inner], _SPECS[inner] = tower, spec
    return spec


def spec_for_type(name: str) -> ArchSpec:
    """The spec of a family name or ``config.model_type`` (``kind:tower`` for a tower)."""
    kind, _, tower = name.partition(":")
    for spec in ARCHITECTURES:
        if not tower and (spec.family == kind or kind in spec.model_types):
            return spec
    return _discovered_type(kind, tower or "language")


def _discovered_type(kind: str, tower: str) -> ArchSpec:
    from .tiny import meta_tiny_model

    if (kind, tower) not in _BY_NAME:
        _BY_NAME[(kind, tower)] = _spec_of_meta(meta_tiny_model(kind), tower)
    return _BY_NAME[(kind, tower)]


def _spec_of_meta(model: nn.Module, tower: str) -> ArchSpec:
    from .discovery import discover

    return discover(model, base_model(model), tower)


_BY_NAME: dict[tuple[str, str], ArchSpec] = {}


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    try:
        return root.get_submodule(path)
    except AttributeError:
        raise ArchitectureError(
            f"{type(root).__name__} has no module {path!r}; the architecture spec does not match this model"
        ) from None


def hf_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def first_tensor(output):
    """A module's main output: the first element of a tuple output, else the output itself."""
    return output[0] if isinstance(output, (tuple, list)) else output


def base_model(model: nn.Module) -> nn.Module:
    """The backbone (``model.bert``, ``model.transformer``...), also through a PEFT wrapper."""
    model = hf_model(model)
    return getattr(model, "base_model", model)


def get_blocks(model: nn.Module) -> nn.ModuleList:
    blocks = get_submodule(base_model(model), arch_for(model).blocks)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ArchitectureError(f"{type(model).__name__} has no transformer blocks at {arch_for(model).blocks!r}")
    return blocks


def get_attention(block: nn.Module, spec: ArchSpec) -> nn.Module | None:
    """The block's softmax attention module; None where the block has none (state-space and
    linear-attention blocks of hybrid models: entropy does not apply there)."""
    if spec.attention is None or not _has(block, spec.attention):
        return None
    module = block.get_submodule(spec.attention)
    if spec.attention_class and type(module).__name__ != spec.attention_class:
        return None
    return module


def get_ffn(block: nn.Module, spec: ArchSpec) -> FFN | None:
    """The block's dense FFN; in an MoE block its shared experts; None for an MoE block without
    shared experts or a block without the FFN (the dense FFN metrics skip it and say so)."""
    paths = (spec.ffn_gate, spec.ffn_up, spec.ffn_down)
    if spec.moe and _has(block, spec.moe.experts):
        paths = tuple(spec.shared_ffn_paths()) if spec.moe.shared_experts else ()
        if len(paths) == 2:
            paths = (None, *paths)
    if not paths or not paths[-1] or not all(_has(block, p) for p in paths if p):
        return None  # no dense FFN here (Nemotron-H: a mixer or attention block of its own)
    inputs = tuple(get_submodule(block, p) for p in paths[:-1] if p)
    return FFN(inputs, get_submodule(block, paths[-1]))


def _has(root: nn.Module, path: str) -> bool:
    try:
        root.get_submodule(path)
        return True
    except AttributeError:
        return False


def attention_window(module: nn.Module) -> int | None:
    """The sliding window an attention module passes to its attention function (Mistral reads its
    config, Qwen2 sets it per layer type); None for full attention."""
    if hasattr(module, "sliding_window"):
        return module.sliding_window
    return getattr(getattr(module, "config", None), "sliding_window", None)


def get_embeddings(model: nn.Module) -> list[nn.Module]:
    base = base_model(model)
    return [get_submodule(base, p) for p in arch_for(model).embeddings]


def num_layers(model: nn.Module) -> int:
    return len(get_blocks(model))


def parameter_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Parameters grouped as ``embeddings``, ``block.<i>`` and ``head`` (everything else: pooler,
    classifier, final norm, LM head). Tied weights are counted once, in the first group that owns them."""
    ids: dict[int, str] = {}
    for emb in get_embeddings(model):
        for p in emb.parameters():
            ids.setdefault(id(p), "embeddings")
    for i, block in enumerate(get_blocks(model)):
        for p in block.parameters():
            ids.setdefault(id(p), f"block.{i}")
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {"embeddings": []}
    groups.update({f"block.{i}": [] for i in range(num_layers(model))})
    groups["head"] = []
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        groups[ids.get(id(p), "head")].append((name, p))
    return groups
