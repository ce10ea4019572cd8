"""Hand a diagnosis' band to the user's own trainer: a PEFT ``LoraConfig`` folder, an Axolotl YAML
fragment, TRL ``SFTTrainer`` ``peft_config`` code, or plain JSON; all from ``Diagnosis.lora_config``
(the one PEFT-config builder). With a model, the config is first dry-run against its
``named_modules()`` (built on the meta device from its config: no weights), so a target or band
layer that matches nothing fails here instead of silently training a smaller adapter.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .diagnosis import Diagnosis
from .errors import ConfigError
from .io import _jsonable, atomic_write_text, output_dir
from .models import arch_for, meta_model, model_config, set_tower
from .strategies.lora import match_lora_targets
from .validate import printable

FORMATS = {"peft": "peft-lora", "axolotl": "axolotl-lora.yaml", "trl": "trl_peft_config.py", "json": "lora_config.json"}
LORA_KEYS = (
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "target_parameters",
    "exclude_modules",
    "layers_to_transform",
    "layers_pattern",
    "fan_in_fan_out",
    "modules_to_save",
    "bias",
    "task_type",
)


@dataclass
class Exported:
    path: Path
    config: object  # the peft LoraConfig
    matched: dict[str, int] | None  # modules matched per target (None: no --model dry run)


def lora_kwargs(config) -> dict:
    """The LoraConfig arguments that differ from a bare ``LoraConfig()``, as plain JSON values."""
    out = {}
    for key in LORA_KEYS:
        value = getattr(config, key)
        if isinstance(value, (set, tuple)):
            value = sorted(value) if key != "layers_to_transform" else list(value)
        if key == "task_type" and value is not None:
            value = str(getattr(value, "value", value))
        if value is not None:
            out[key] = value
    return out


def dry_run(d: Diagnosis, config, model_name: str) -> dict[str, int]:
    """Match ``config`` against ``model_name``'s modules; refuse a model of another architecture."""
    kind = model_config(model_name).model_type
    family, spec = arch_for(kind).family, d.spec()
    if family != spec.base_family:
        raise ConfigError(
            f"the diagnosis was made on a {d.family} model ({d.model}) but --model {model_name} is "
            f"{kind}; its layers and module names differ: diagnose that model first"
        )
    meta = meta_model(model_name, d.task_type)
    set_tower(meta, spec.tower)
    return match_lora_targets(meta, config)


def _header(d: Diagnosis) -> list[str]:
    """Comment lines about where the band came from; every user string passes through
    ``printable`` (one line, no control characters), so a comment cannot end early."""
    rule = d.selection.get("rule", "?")
    return [
        f"inflora: LoRA on the inflection band {[int(i) for i in d.inflection_layers]} of "
        f"{printable(d.model)} ({printable(d.family)}, rule {printable(rule)}, {printable(d.task_type)})"
    ]


def _comments(lines: list[str]) -> str:
    return "".join(f"# {printable(line, 1000)}\n" for line in lines)


def _axolotl(d: Diagnosis, kw: dict) -> str:
    """One ``yaml.safe_dump`` of one dict (keys fixed here, values plain data), comments above it."""
    import yaml

    if kw.get("exclude_modules"):
        raise ConfigError(
            f"these targets need PEFT's exclude_modules {kw['exclude_modules']}, which an Axolotl "
            "config cannot express; use --format peft or name other --lora-targets"
        )
    fragment = {
        "adapter": "lora",
        "lora_r": kw["r"],
        "lora_alpha": kw["lora_alpha"],
        "lora_dropout": kw["lora_dropout"],
        "lora_target_modules": kw["target_modules"],
        "peft_layers_to_transform": kw["layers_to_transform"],
        "peft_layers_pattern": [kw["layers_pattern"]],
    }
    if kw.get("target_parameters"):  # fused MoE experts; Axolotl passes these to LoraConfig.target_parameters
        fragment["lora_target_parameters"] = kw["target_parameters"]
    if kw.get("fan_in_fan_out"):
        fragment["lora_fan_in_fan_out"] = True
    if kw.get("modules_to_save"):
        fragment["lora_modules_to_save"] = kw["modules_to_save"]
    return _comments(_header(d) + ["merge into your Axolotl config"]) + yaml.safe_dump(fragment, sort_keys=False)


# The whole TRL file: comments, one import, one assignment. The only variable part is KWARGS,
# the repr of a dict of plain literals (``_literal`` checks), which Python reads back as data.
TRL_TEMPLATE = "{comments}from peft import LoraConfig\n\npeft_config = LoraConfig(**{kwargs})\n"


def _literal(value):
    """``value`` if it is made of JSON-like literals only (so its repr is a Python literal)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"cannot write the non-finite number {value} into a TRL config")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_literal(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _literal(v) for k, v in value.items()}
    raise ConfigError(f"cannot write {type(value).__name__} into a TRL config")


def _trl(d: Diagnosis, kw: dict) -> str:
    comments = _comments(_header(d) + ["use as SFTTrainer(model=..., train_dataset=..., peft_config=peft_config)"])
    return TRL_TEMPLATE.format(comments=comments, kwargs=repr(_literal(kw)))


def _json(d: Diagnosis, kw: dict) -> str:
    meta = {
        "model": d.model,
        "family": d.family,
        "task_type": d.task_type,
        "band": d.inflection_layers,
        "rule": d.selection.get("rule"),
        "stability": d.stability,
    }
    return json.dumps(_jsonable({"inflora": meta, "lora_config": kw}), indent=2, allow_nan=False) + "\n"


def export_config(
    d: Diagnosis, fmt: str, out: str | os.PathLike | None = None, *, model: str | None = None, **lora
) -> Exported:
    """Write the band's LoRA config in ``fmt`` (peft | axolotl | trl | json); ``lora`` passes
    ``targets``/``r``/``alpha``/``dropout`` to ``Diagnosis.lora_config``. ``out`` defaults to a
    file (the peft folder) named after the format."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    config = d.lora_config(**lora)
    matched = dry_run(d, config, model) if model else None
    config.base_model_name_or_path = model or d.model
    path = Path(out) if out is not None else Path(FORMATS[fmt])
    if fmt == "peft":
        config.save_pretrained(str(output_dir(path)))
    else:
        writer = {"axolotl": _axolotl, "trl": _trl, "json": _json}[fmt]
        atomic_write_text(path, writer(d, lora_kwargs(config)))
    return Exported(path, config, matched)
