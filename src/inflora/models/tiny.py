"""Tiny random-init models of every supported family, built locally (no download).

Used by fast tests and for trying the pipeline without weights. The vocabulary size matches the
BERT tokenizer of the bundled MiniLM so the same tokenizer can feed every family. The tiny Qwen2
uses grouped-query attention (2 query heads per key/value head), like the real ones.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ArchitectureError

VOCAB = 30522


# Key/value heads per query head where the real family uses grouped-query attention (Qwen2).
GQA_GROUPS = {"qwen2": 2}


def tiny_config(family: str, layers: int = 4, hidden: int = 32, heads: int = 4):
    """The config of ``tiny_model`` (also used to build a tiny model on the meta device)."""
    import transformers as tf

    common = dict(vocab_size=VOCAB, num_labels=2, pad_token_id=0)
    enc = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
               intermediate_size=2 * hidden, max_position_embeddings=128, **common)
    kv_heads = max(1, heads // GQA_GROUPS.get(family, 1))
    dec = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
               num_key_value_heads=kv_heads, intermediate_size=2 * hidden, max_position_embeddings=128, **common)
    table = {
        "bert": lambda: tf.BertConfig(**enc),
        "roberta": lambda: tf.RobertaConfig(**{**enc, "pad_token_id": 1}),
        "electra": lambda: tf.ElectraConfig(embedding_size=hidden, **enc),
        "mpnet": lambda: tf.MPNetConfig(**enc),
        "distilbert": lambda: tf.DistilBertConfig(dim=hidden, n_layers=layers, n_heads=heads,
                                                  hidden_dim=2 * hidden, max_position_embeddings=128, **common),
        "gpt2": lambda: tf.GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=128,
                                      bos_token_id=101, eos_token_id=102, **common),  # MiniLM [CLS]/[SEP]
        "llama": lambda: tf.LlamaConfig(**dec),
        "mistral": lambda: tf.MistralConfig(**dec),
        "qwen2": lambda: tf.Qwen2Config(**dec),
    }
    if family not in table:
        raise ArchitectureError(f"no tiny config for {family!r}; available: {', '.join(sorted(table))}")
    return table[family]()


TINY_FAMILIES = ("bert", "roberta", "electra", "mpnet", "distilbert", "gpt2", "llama", "mistral", "qwen2")


def tiny_model(
    family: str = "bert", *, layers: int = 4, hidden: int = 32, heads: int = 4,
    task: str = "classification", seed: int = 0, **config_overrides,
) -> nn.Module:
    """A seeded random-init model (``task``: ``classification`` or ``causal-lm``), eager attention.
    ``config_overrides`` set config fields (e.g. ``num_key_value_heads=2``, ``sliding_window=4``)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = tiny_config(family, layers, hidden, heads)
    for name, value in config_overrides.items():
        setattr(config, name, value)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    auto = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    model = auto.from_config(config, attn_implementation="eager")
    model.config.name_or_path = f"tiny-{family}"
    return model.eval()
