"""LoRA through Hugging Face PEFT on chosen blocks, with targets from the architecture table.

The one place PEFT configs are built: ``lora_config`` serves ``inject_lora``, ``Diagnosis.lora_config``
and ``inflora export``; ``HEAD_MODULES`` is the one list of heads that stay trainable; and
``match_lora_targets`` dry-runs a config against a model with PEFT's own matcher, so a target or a
band layer that matches nothing is an error instead of a silently smaller adapter.
"""

from __future__ import annotations

import copy
import re

from torch import nn

from ..data.task_type import CAUSAL_LM, CLASSIFICATION
from ..errors import ConfigError
from ..models.architectures import ArchSpec, arch_for, num_layers
from ..models.loading import meta_model
from ..models.moe import MoeLayout, moe_layout
from ..validate import LORA_DEFAULTS, check_values

# Classification heads that must stay trainable in every strategy (PEFT ``modules_to_save``).
HEAD_MODULES = ("pooler", "pre_classifier", "classifier", "score")
TARGET_PRESETS = ("qkv", "attention", "mlp", "all", "experts")
TASK_TYPES = {CLASSIFICATION: "SEQ_CLS", CAUSAL_LM: "CAUSAL_LM"}  # inflora's task type -> PEFT's


def family_spec(family: str | ArchSpec) -> ArchSpec:
    """The spec itself, or the spec of a family name (a table row, else discovered on a tiny model)."""
    return family if isinstance(family, ArchSpec) else arch_for(family)


def layers_pattern(spec: ArchSpec) -> str:
    """PEFT's ``layers_pattern``: the block list's name, or its whole path in a model with several
    towers (so the band's indices hit only the chosen tower's blocks, PEFT #1024)."""
    return spec.blocks if len(spec.towers) > 1 else spec.blocks.split(".")[-1]


def _unique(paths) -> list[str]:
    return list(dict.fromkeys(p for p in paths if p))  # None: a part the model lacks (no attention)


MODULE_NAME = re.compile(r"[A-Za-z0-9_.\-]+")  # what a module path may hold (no regex, no line break)


def check_target_names(targets) -> None:
    """Each LoRA target is a preset or a module name, whatever the model (checked before loading one)."""
    for t in _split(targets):
        if t not in TARGET_PRESETS and not MODULE_NAME.fullmatch(t):
            raise ConfigError(
                f"LoRA target {t!r} is neither a preset ({', '.join(TARGET_PRESETS)}) nor a module "
                "name (letters, digits, _ . -)"
            )


def _split(targets: str | list[str] | None) -> list[str]:
    if isinstance(targets, str):
        return [t.strip() for t in targets.split(",") if t.strip()]
    return list(targets or [])


def resolve_targets(family: str | ArchSpec, targets: str | list[str] | None, moe: MoeLayout | None = None) -> list[str]:
    """LoRA target *module* paths inside a block: ``qkv`` (the default: query/key/value, or GPT-2's
    fused ``c_attn``), ``attention`` (q/k/v and the output projection), ``mlp`` (the feed-forward
    projections; on a mixture-of-experts model the shared experts' Linear layers, the routed experts
    being parameters: see ``resolve_parameters``), ``all`` (both), ``experts`` (parameters only), or
    explicit names (a comma list; short names like ``q_proj`` match by suffix, as in PEFT)."""
    spec = family_spec(family)
    targets = _split(targets) or [LORA_DEFAULTS.targets]
    check_target_names(targets)
    mlp = list(moe.shared) if moe else list(spec.mlp_targets)
    presets = {
        "qkv": list(spec.lora_targets),
        "attention": _unique([*spec.lora_targets, spec.output]),
        "mlp": mlp,
        "all": _unique([*spec.lora_targets, spec.output, *mlp]),
        "experts": [],
    }
    out: list[str] = []
    for t in targets:
        out += presets.get(t, [t])
    return _unique(out)


def resolve_parameters(
    family: str, targets: str | list[str] | None, moe: MoeLayout | None, layers: list[int] | None
) -> list[str]:
    """PEFT ``target_parameters``: the fused expert weights that ``experts``, ``mlp`` and ``all`` name
    on a mixture-of-experts model. PEFT matches parameters by name only (it ignores
    ``layers_to_transform`` for them), so a band is written into each name: ``layers.3.mlp.experts.down_proj``
    names block 3 (a block index, never an expert index)."""
    wanted = {"experts", "mlp", "all"} & set(_split(targets))
    if not wanted:
        return []
    if moe is None:
        if "experts" in wanted:
            raise ConfigError(
                f"--lora-targets experts needs a mixture-of-experts model; this {family_spec(family).family} model has dense "
                f"feed-forward layers (use mlp)"
            )
        return []
    if layers is None:
        return list(moe.expert_parameters)
    pattern = family_spec(family).blocks.split(".")[-1]
    return [f"{pattern}.{i}.{p}" for i in sorted(set(layers)) if i in moe.blocks for p in moe.expert_parameters]


def _shadowed(spec: ArchSpec, paths: list[str]) -> list[str] | None:
    """Block paths that PEFT's suffix matching would also hit but were not asked for: BERT's FFN
    ``output.dense`` is a suffix of ``attention.output.dense``. PEFT's ``exclude_modules`` keeps them out."""
    known = _unique([spec.query, spec.key, spec.value, spec.output, *spec.mlp_targets])
    exact = [p for p in paths if p in known]  # a table path means that module; a short name matches by suffix
    out = [q for q in known if q not in paths and any(q.endswith("." + p) for p in exact)]
    return out or None


def lora_config(
    family: str | ArchSpec,
    layers: list[int] | None,
    *,
    r: int = LORA_DEFAULTS.r,
    alpha: int = LORA_DEFAULTS.alpha,
    dropout: float = LORA_DEFAULTS.dropout,
    targets: str | list[str] | None = None,
    modules_to_save: list[str] | None = None,
    task_type: str | None = "SEQ_CLS",
    moe: MoeLayout | None = None,
):
    """A ``LoraConfig`` restricted to ``layers`` (None: every block); ``targets`` as in
    ``resolve_targets`` (and ``resolve_parameters`` with ``moe``, the model's MoE layout);
    ``modules_to_save`` the heads that train in full."""
    from peft import LoraConfig

    spec = family_spec(family)
    if layers is not None:
        if not layers:
            raise ConfigError("LoRA needs at least one layer")
        if any(i < 0 for i in layers):
            raise ConfigError(f"layer indices must be >= 0, got {layers}")
    check_values(lora_r=r, lora_alpha=alpha, lora_dropout=dropout)
    paths = resolve_targets(family, targets, moe)
    parameters = resolve_parameters(family, targets, moe, layers)
    if parameters and dropout:
        raise ConfigError(
            f"LoRA on fused expert parameters (PEFT target_parameters) cannot use dropout, got "
            f"{dropout}; pass --lora-dropout 0"
        )
    if not paths and not parameters:
        raise ConfigError(
            f"--lora-targets {targets!r} names nothing to adapt in {family_spec(family).family} blocks {layers}"
        )
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=paths,
        exclude_modules=_shadowed(spec, paths),
        target_parameters=parameters or None,
        layers_to_transform=sorted(set(layers)) if layers is not None else None,
        layers_pattern=layers_pattern(spec) if layers is not None else None,
        fan_in_fan_out=spec.fused_conv1d,
        modules_to_save=list(modules_to_save) if modules_to_save else None,
        task_type=task_type,
    )


def head_modules(model: nn.Module) -> list[str]:
    """The entries of ``HEAD_MODULES`` this model has (a causal LM has none)."""
    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    return [h for h in HEAD_MODULES if h in names]


def task_type_of(model: nn.Module) -> str:
    """What a model already built is for: ``classification`` when it has a classifier/score head or is
    one of transformers' sequence classifiers (T5's and Flaubert's heads have other names), else
    ``causal-lm`` (data decides it before loading: ``inflora.data.task_type``)."""
    if {"classifier", "score"} & set(head_modules(model)) or _is_sequence_classifier(model):
        return CLASSIFICATION
    return CAUSAL_LM


def _is_sequence_classifier(model: nn.Module) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES as names

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    classes = {c for v in names.values() for c in ((v,) if isinstance(v, str) else v)}
    return type(inner).__name__ in classes


def _layer_of(name: str, pattern: str | None) -> int | None:
    match = re.match(rf"(?:^|.*?\.){re.escape(pattern)}\.(\d+)\.", name) if pattern else None
    return int(match.group(1)) if match else None


def parameter_hits(model: nn.Module, target: str) -> list[str]:
    """Parameter names PEFT's ``target_parameters`` matcher takes for ``target`` (exact, or a suffix)."""
    return [
        f"{m}.{p}"
        for m, module in model.named_modules()
        if m
        for p, _ in module.named_parameters(recurse=False)
        if f"{m}.{p}" == target or f"{m}.{p}".endswith("." + target)
    ]


def match_lora_targets(model: nn.Module, config) -> dict[str, int]:
    """Dry-run ``config`` against ``model.named_modules()`` with PEFT's matcher (a model on the meta
    device will do): the number of modules (or parameters, for ``target_parameters``) each target
    matches. Raises when a target, or a layer of ``layers_to_transform``, matches nothing."""
    from peft.tuners.tuners_utils import check_target_module_exists

    names = [n for n, _ in model.named_modules() if n]
    counts, layers_hit = {}, set()
    for target in config.target_modules or ():
        one = copy.copy(config)
        one.target_modules = {target}
        hits = [n for n in names if check_target_module_exists(one, n)]
        counts[target] = len(hits)
        layers_hit |= {_layer_of(n, config.layers_pattern) for n in hits}
    for target in config.target_parameters or ():
        hits = parameter_hits(model, target)
        counts[target] = len(hits)
        layers_hit |= {_layer_of(n, config.layers_pattern) for n in hits}
    missing = [t for t, c in counts.items() if c == 0]
    kind = getattr(model.config, "model_type", type(model).__name__)
    if missing:
        where = f" in layers {config.layers_to_transform}" if config.layers_to_transform else ""
        raise ConfigError(
            f"LoRA target(s) {missing} match no module of this {kind} model{where}; "
            f"presets: {', '.join(TARGET_PRESETS)}, or module names such as {_examples(model)}"
        )
    empty = [i for i in config.layers_to_transform or [] if i not in layers_hit]
    if empty:
        raise ConfigError(
            f"layer(s) {empty} of the band match no module: this {kind} model has "
            f"{num_layers(model)} blocks (0-{num_layers(model) - 1})"
        )
    return counts


def check_lora_targets(
    model_name: str, targets: str | list[str] | None, task: str = CLASSIFICATION, dropout: float = LORA_DEFAULTS.dropout
) -> dict[str, int]:
    """Dry-run ``targets`` on every block of ``model_name`` built on the meta device: a target the
    model lacks (or expert targets with dropout) fails before any data or weights are loaded."""
    model = meta_model(model_name, task)
    return match_lora_targets(
        model,
        lora_config(
            arch_for(model), None, targets=targets, dropout=dropout, task_type=TASK_TYPES[task], moe=moe_layout(model)
        ),
    )


def _examples(model: nn.Module) -> str:
    """A few target paths of block 0 from the architecture table, for the error message."""
    spec = arch_for(model)
    return ", ".join(_unique([*spec.lora_targets, spec.output, *spec.mlp_targets])[:6])


def inject_lora(
    model: nn.Module,
    layers: list[int] | None,
    *,
    r: int = LORA_DEFAULTS.r,
    alpha: int = LORA_DEFAULTS.alpha,
    dropout: float = LORA_DEFAULTS.dropout,
    targets: str | list[str] | None = None,
    train_head: bool = True,
):
    """Wrap ``model`` in a PEFT model with LoRA on ``layers`` only (None = all blocks); the
    classifier (and pooler) stay trainable. Returns the PEFT model."""
    from peft import get_peft_model

    spec = arch_for(model)
    n = num_layers(model)
    if layers is not None and any(i >= n for i in layers):
        raise ConfigError(f"layers {sorted(layers)} out of range for a {n}-layer model")
    task = task_type_of(model)
    config = lora_config(
        spec,
        layers,
        r=r,
        alpha=alpha,
        dropout=dropout,
        targets=targets,
        modules_to_save=head_modules(model) if train_head and task == CLASSIFICATION else None,
        task_type=TASK_TYPES[task],
        moe=moe_layout(model),
    )
    match_lora_targets(model, config)
    return get_peft_model(model, config)
