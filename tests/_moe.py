"""Tiny random-init mixture-of-experts decoders from transformers' own config classes (hidden 32,
3 blocks, 4 experts, top-2), until ``inflora.models.tiny_model`` builds them itself."""

from __future__ import annotations

import torch

from inflora.models.tiny import VOCAB

MOE_FAMILIES = ("qwen3_moe", "mixtral", "gpt_oss")
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    max_position_embeddings=128,
    pad_token_id=0,
    num_experts_per_tok=2,
)


def tiny_moe_config(family: str):
    import transformers as tf

    if family == "qwen3_moe":
        return tf.Qwen3MoeConfig(**_COMMON, num_experts=4, moe_intermediate_size=16, head_dim=8)
    if family == "mixtral":
        return tf.MixtralConfig(**_COMMON, num_local_experts=4)
    if family == "gpt_oss":
        return tf.GptOssConfig(
            **_COMMON, num_local_experts=4, head_dim=8, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}
        )
    raise ValueError(family)


def tiny_moe(family: str, seed: int = 0):
    """A seeded causal LM of ``family`` with eager attention (the probe picks its own path)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_moe_config(family), attn_implementation="eager")
    model.config.name_or_path = f"tiny-{family}"
    return model.eval()


def save_tiny_moe(family: str, path, tokenizer) -> str:
    """The tiny model and MiniLM's tokenizer saved as a folder that ``--model`` can load."""
    tiny_moe(family).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
