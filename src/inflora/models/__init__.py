"""Models: loading, block discovery (``discovery.py``) and the architecture override table."""
from .architectures import (
    ARCHITECTURES, FFN, ArchSpec, arch_for, base_model, first_tensor, get_attention, get_blocks, get_embeddings,
    get_ffn, hf_model, num_layers, parameter_groups, set_tower, supported_model_types,
)
from .loading import (
    ALIASES, attention_implementation, ensure_eager_attention, ensure_pad_token, load_model, meta_model,
    model_config, resolve_model_path,
)
from .tiny import tiny_config, tiny_model

__all__ = [
    "ALIASES", "ARCHITECTURES", "FFN", "ArchSpec", "arch_for", "attention_implementation", "base_model",
    "ensure_eager_attention", "ensure_pad_token", "first_tensor", "get_attention", "get_blocks",
    "get_embeddings", "get_ffn", "hf_model", "load_model", "meta_model", "model_config", "num_layers",
    "parameter_groups", "resolve_model_path", "set_tower", "supported_model_types", "tiny_config", "tiny_model",
]
