"""Tiny random-init models of every family, built locally from transformers' own config classes.

Used by fast tests and for trying the pipeline without weights (``--model tiny-<family>``). The
vocabulary size matches the BERT tokenizer of the bundled MiniLM so the same tokenizer can feed
every family. The first families keep their hand-set configs (the tests' numbers were derived
with them); every other ``config.model_type`` is sized by ``sized_config``: ``AutoConfig.for_model``
with the size fields it has set small (design/discovery.md lists the traps met).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ArchitectureError

VOCAB = 30522


# Key/value heads per query head where the real family uses grouped-query attention (Qwen2).
GQA_GROUPS = {"qwen2": 2}

# The families the issue tried (34) plus vision-language models; every one has a matrix test.
FAMILIES = (
    "llama",
    "mistral",
    "qwen2",
    "gpt2",
    "bert",
    "roberta",
    "xlm-roberta",
    "electra",
    "distilbert",
    "mpnet",
    "qwen3",
    "qwen3_moe",
    "qwen2_moe",
    "mixtral",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi",
    "phi3",
    "olmo2",
    "granite",
    "cohere",
    "starcoder2",
    "gpt_neox",
    "falcon",
    "stablelm",
    "deepseek_v3",
    "gpt_oss",
    "smollm3",
    "gptj",
    "opt",
    "bloom",
    "deberta-v2",
    "modernbert",
)
VISION_LANGUAGE = ("qwen2_vl",)
# Overrides of the generic sizes, per family (each a trap of design/discovery.md).
FAMILY_SIZES = {
    "deepseek_v3": lambda h, heads: dict(first_k_dense_replace=1),
    # ALBERT shares one block across all its layers by default: one block for per-block metrics of
    # 4 layers; a group per layer gives the block list one entry per layer (the per-block metrics' unit).
    "albert": lambda h, heads: dict(num_hidden_groups=4),
    # Mamba-2 mixers split expand × hidden (expand 2) into heads of head_dim: the defaults (128 heads,
    # Falcon-H1's 1024-wide mixer) do not match a small hidden size.
    "mamba2": lambda h, heads: dict(num_heads=2 * heads, n_groups=1),
    "falcon_h1": lambda h, heads: dict(mamba_d_ssm=2 * h, mamba_n_groups=1),
    # BigBird swaps block-sparse for full attention on inputs this short, replacing the module found
    # at discovery during the forward (the probe then flags the entropy as not measured): build it full.
    "big_bird": lambda h, heads: dict(attention_type="original_full"),
    # LayoutLMv3 adds box embeddings of 4 coordinates and 2 shapes: 4·coordinate + 2·shape = hidden.
    "layoutlmv3": lambda h, heads: dict(coordinate_size=h // 8, shape_size=h // 4),
}


def _classic(family: str, layers: int, hidden: int, heads: int):
    import transformers as tf

    common = dict(vocab_size=VOCAB, num_labels=2, pad_token_id=0)
    enc = dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        **common,
    )
    kv_heads = max(1, heads // GQA_GROUPS.get(family, 1))
    dec = dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        **common,
    )
    table = {
        "bert": lambda: tf.BertConfig(**enc),
        "roberta": lambda: tf.RobertaConfig(**{**enc, "pad_token_id": 1}),
        "electra": lambda: tf.ElectraConfig(embedding_size=hidden, **enc),
        "mpnet": lambda: tf.MPNetConfig(**enc),
        "distilbert": lambda: tf.DistilBertConfig(
            dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=2 * hidden, max_position_embeddings=128, **common
        ),
        "gpt2": lambda: tf.GPT2Config(
            n_embd=hidden, n_layer=layers, n_head=heads, n_positions=128, bos_token_id=101, eos_token_id=102, **common
        ),  # MiniLM [CLS]/[SEP]
        "llama": lambda: tf.LlamaConfig(**dec),
        "mistral": lambda: tf.MistralConfig(**dec),
        "qwen2": lambda: tf.Qwen2Config(**dec),
    }
    return table[family]() if family in table else None


def _size_fields(layers: int, hidden: int, heads: int) -> dict:
    d = hidden // heads
    return dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=d,
        intermediate_size=2 * hidden,
        vocab_size=VOCAB,
        max_position_embeddings=128,
        num_labels=2,
        pad_token_id=0,
        bos_token_id=101,
        eos_token_id=102,
        embedding_size=hidden,
        pooler_hidden_size=hidden,
        num_experts=4,
        num_local_experts=4,
        n_routed_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=hidden,
        shared_expert_intermediate_size=hidden,
        n_group=1,
        topk_group=1,
        kv_lora_rank=16,
        q_lora_rank=None,
        qk_rope_head_dim=d,
        qk_nope_head_dim=d,
        v_head_dim=d,
        sliding_window=16,
        local_attention=16,
        global_attn_every_n_layers=2,
        rotary_dim=d // 2,
        decoder_start_token_id=0,
        mamba_n_heads=heads,
        mamba_d_head=2 * hidden // heads,  # Bamba-style mixers (expand 2) derive d_head once
        decoder_vocab_size=VOCAB,  # Marian's decoder has its own vocabulary size
        attention_window=16,  # Longformer's local window (512 by default) must fit the probe's 32 tokens
    )


def sized_config(model_type: str, layers: int = 4, hidden: int = 32, heads: int = 4, **extra):
    """``AutoConfig.for_model(model_type)`` with every size field it has set small."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.for_model(model_type)
    except ValueError:
        raise ArchitectureError(f"unknown model type {model_type!r}: transformers has no config class for it") from None
    fields = {
        **_size_fields(layers, hidden, heads),
        **FAMILY_SIZES.get(model_type, lambda h, n: {})(hidden, heads),
        **extra,
    }
    if hasattr(config, "kv_lora_rank"):  # latent attention expands k/v to every query head
        fields["num_key_value_heads"] = heads
    if getattr(config, "is_encoder_decoder", False):
        config.decoder_start_token_id = 0
    config.use_cache = False  # a probe needs no cache (and hybrid caches refuse 4 blocks without attention)
    for name, value in fields.items():
        if hasattr(config, name) or name in getattr(config, "attribute_map", {}):
            try:
                setattr(config, name, value)
            except Exception:  # noqa: BLE001 - a derived property (Falcon's head_dim), or a value the class refuses
                if name == "q_lora_rank":  # some latent-attention configs require a query rank
                    setattr(config, name, 16)
    _size_layer_types(config, layers)
    return config


def _size_layer_types(config, layers: int) -> None:
    """``layer_types`` for ``layers`` blocks: sliding and global alternate where the family mixes
    them; a hybrid keeps its first kinds with its last block softmax (``full_attention``), so 4
    blocks of Kimi-Linear or Qwen3-Next still hold one block whose attention can be measured."""
    types = getattr(config, "layer_types", None)
    if not types:
        return
    if all(t in ("sliding_attention", "full_attention") for t in types):
        mixed = "sliding_attention" in types
        config.layer_types = [
            ("sliding_attention" if mixed and i % 2 == 0 else "full_attention") for i in range(layers)
        ]
    elif "full_attention" in types and len(types) > layers:
        config.layer_types = [*types[: layers - 1], "full_attention"]


def _vision_language(model_type: str, layers: int, hidden: int, heads: int):
    from transformers import AutoConfig

    text = _size_fields(layers, hidden, heads)
    text.update(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]})
    vision = dict(
        depth=2,
        embed_dim=hidden,
        hidden_size=hidden,
        num_heads=heads,
        mlp_ratio=2,
        in_channels=3,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    return AutoConfig.for_model(
        model_type,
        text_config=text,
        vision_config=vision,
        vocab_size=VOCAB,
        image_token_id=VOCAB - 3,
        video_token_id=VOCAB - 2,
        vision_start_token_id=VOCAB - 4,
    )


def tiny_config(family: str, layers: int = 4, hidden: int = 32, heads: int = 4):
    """The config of ``tiny_model`` (also used to build a tiny model on the meta device)."""
    config = _classic(family, layers, hidden, heads)
    if config is not None:
        return config
    if family in VISION_LANGUAGE:
        return _vision_language(family, layers, hidden, heads)
    return sized_config(family, layers, hidden, heads)


TINY_FAMILIES = ("bert", "roberta", "electra", "mpnet", "distilbert", "gpt2", "llama", "mistral", "qwen2")


def auto_class(config, task: str):
    """The auto class building ``task`` for this config: causal-LM (or image-text-to-text for
    vision-language models) or sequence classification; an error naming the task it lacks."""
    import transformers as tf

    autos = (
        [tf.AutoModelForCausalLM, tf.AutoModelForImageTextToText]
        if task == "causal-lm"
        else [tf.AutoModelForSequenceClassification]
    )
    for auto in autos:
        if type(config) in auto._model_mapping:
            return auto
    raise ArchitectureError(f"transformers has no {task} model for {config.model_type!r}")


def tiny_model(
    family: str = "bert",
    *,
    layers: int = 4,
    hidden: int = 32,
    heads: int = 4,
    task: str = "classification",
    seed: int = 0,
    **config_overrides,
) -> nn.Module:
    """A seeded random-init model (``task``: ``classification`` or ``causal-lm``), eager attention.
    ``config_overrides`` set config fields (e.g. ``num_key_value_heads=2``, ``sliding_window=4``)."""
    config = tiny_config(family, layers, hidden, heads)
    for name, value in config_overrides.items():
        setattr(config, name, value)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = auto_class(config, task).from_config(config, attn_implementation="eager")
    model.config.name_or_path = f"tiny-{family}"
    return model.eval()


def meta_tiny_model(model_type: str) -> nn.Module:
    """A tiny model of ``model_type`` on the meta device (module names and shapes, no memory)."""
    config = tiny_config(model_type)
    for task in ("causal-lm", "classification"):
        try:
            auto = auto_class(config, task)
        except ArchitectureError:
            continue
        with torch.device("meta"):
            return auto.from_config(config)
    raise ArchitectureError(f"transformers has neither a causal-LM nor a classification model for {model_type!r}")
