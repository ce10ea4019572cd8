"""The architecture table: where each model family keeps its blocks, attention and projections.

Like BackPACK's module map, nothing is guessed: a family is supported when it has a row here.
Paths are dotted attribute paths; ``blocks`` and ``embeddings`` are relative to
``model.base_model`` and the others relative to one block. To add a family, add one
``ArchSpec`` to ``ARCHITECTURES`` with its ``config.model_type`` values.

The feed-forward layout is ``ffn_up`` (and ``ffn_gate`` in gated families: h = act(gate x) * up x)
into the hidden units, and ``ffn_down`` out of them; the units h are always ``ffn_down``'s input,
so every family's FFN activations can be read the same way (ReDo, the dormant diagnostic).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import ArchitectureError


@dataclass(frozen=True)
class ArchSpec:
    family: str
    model_types: tuple[str, ...]
    blocks: str                      # ModuleList of transformer blocks (relative to base_model)
    attention: str                   # module whose output[1] is the attention map [B, H, Tq, Tk]
    query: str
    key: str
    value: str
    output: str                      # attention output projection
    embeddings: tuple[str, ...]      # embedding modules (relative to base_model)
    ffn_up: str                      # feed-forward input projection (into the hidden units)
    ffn_down: str                    # feed-forward output projection (its input is the hidden units)
    ffn_gate: str | None = None      # gated FFNs (SwiGLU): the gate projection beside ffn_up
    causal: bool = False
    fused_qkv: bool = False          # GPT-2's c_attn holds q, k and v in one Linear
    maps_need_output_attentions: bool = False  # the module returns its map only when asked
    attention_interface: bool = True  # modeling code calls transformers' AttentionInterface (streaming entropy works)

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """Default LoRA targets: q/k/v (the fused projection where the family fuses them)."""
        return (self.query,) if self.fused_qkv else (self.query, self.key, self.value)

    @property
    def mlp_targets(self) -> tuple[str, ...]:
        """The feed-forward projections (gate, up, down where present), relative to one block."""
        return tuple(p for p in (self.ffn_gate, self.ffn_up, self.ffn_down) if p)

    @property
    def ffn_inputs(self) -> tuple[str, ...]:
        """The projections whose output rows make the hidden units (up, plus gate where gated)."""
        return tuple(p for p in (self.ffn_gate, self.ffn_up) if p)


@dataclass(frozen=True)
class FFN:
    """One block's feed-forward modules: ``inputs`` make the hidden units, ``down`` consumes them."""

    inputs: tuple[nn.Module, ...]
    down: nn.Module


_BERT_LIKE = dict(
    blocks="encoder.layer", attention="attention.self", query="attention.self.query",
    key="attention.self.key", value="attention.self.value", output="attention.output.dense",
    embeddings=("embeddings",), ffn_up="intermediate.dense", ffn_down="output.dense",
)
_LLAMA_LIKE = dict(
    blocks="layers", attention="self_attn", query="self_attn.q_proj", key="self_attn.k_proj",
    value="self_attn.v_proj", output="self_attn.o_proj", embeddings=("embed_tokens",), causal=True,
    ffn_gate="mlp.gate_proj", ffn_up="mlp.up_proj", ffn_down="mlp.down_proj",
)

_NO_DENSE_FFN = dict(ffn_gate=None, ffn_up="", ffn_down="")

ARCHITECTURES: tuple[ArchSpec, ...] = (
    ArchSpec("bert", ("bert",), **_BERT_LIKE),
    ArchSpec("roberta", ("roberta", "xlm-roberta"), **_BERT_LIKE),
    ArchSpec("electra", ("electra",), **_BERT_LIKE),
    ArchSpec(
        "distilbert", ("distilbert",), blocks="transformer.layer", attention="attention",
        query="attention.q_lin", key="attention.k_lin", value="attention.v_lin",
        output="attention.out_lin", embeddings=("embeddings",), ffn_up="ffn.lin1", ffn_down="ffn.lin2",
    ),
    ArchSpec(
        "mpnet", ("mpnet",), blocks="encoder.layer", attention="attention.attn",
        query="attention.attn.q", key="attention.attn.k", value="attention.attn.v",
        output="attention.attn.o", embeddings=("embeddings",), maps_need_output_attentions=True,
        ffn_up="intermediate.dense", ffn_down="output.dense",
        attention_interface=False,
    ),
    ArchSpec(
        "gpt2", ("gpt2",), blocks="h", attention="attn", query="attn.c_attn", key="attn.c_attn",
        value="attn.c_attn", output="attn.c_proj", embeddings=("wte", "wpe"), causal=True, fused_qkv=True,
        ffn_up="mlp.c_fc", ffn_down="mlp.c_proj",
    ),
    ArchSpec("llama", ("llama", "mistral", "qwen2"), **_LLAMA_LIKE),
    # MoE rows (minimal, until discovery): no dense FFN (ffn paths ""); the experts are found by models/moe.py.
    ArchSpec("qwen3_moe", ("qwen3_moe", "qwen2_moe", "mixtral"), **{**_LLAMA_LIKE, **_NO_DENSE_FFN}),
    # gpt-oss adds a learned sink logit to each head's softmax: read eager maps, not the streaming path
    ArchSpec("gpt_oss", ("gpt_oss",), **{**_LLAMA_LIKE, **_NO_DENSE_FFN}, attention_interface=False),
)

_BY_TYPE = {t: spec for spec in ARCHITECTURES for t in spec.model_types}


def supported_model_types() -> list[str]:
    return sorted(_BY_TYPE)


def arch_for(model_or_type: nn.Module | str) -> ArchSpec:
    """The table row for a model (or a ``config.model_type``); a clear error for unknown families."""
    if isinstance(model_or_type, str):
        model_type = model_or_type
    else:
        config = getattr(model_or_type, "config", None)
        model_type = getattr(config, "model_type", None) or type(model_or_type).__name__
    if model_type not in _BY_TYPE:
        raise ArchitectureError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(supported_model_types())}. "
            "To add one, append an ArchSpec to inflora.models.architectures.ARCHITECTURES"
        )
    return _BY_TYPE[model_type]


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    try:
        return root.get_submodule(path)
    except AttributeError:
        raise ArchitectureError(f"{type(root).__name__} has no module {path!r}; the architecture table does not match this model") from None


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


def get_attention(block: nn.Module, spec: ArchSpec) -> nn.Module:
    return get_submodule(block, spec.attention)


def get_ffn(block: nn.Module, spec: ArchSpec) -> FFN:
    if not spec.ffn_down:
        raise ArchitectureError(f"{spec.family} blocks have a mixture-of-experts feed-forward, not a dense FFN "
                                "(see inflora.models.moe)")
    return FFN(tuple(get_submodule(block, p) for p in spec.ffn_inputs), get_submodule(block, spec.ffn_down))


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
