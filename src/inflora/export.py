"""Hand a diagnosis' band to the user's own trainer: a PEFT ``LoraConfig`` folder, an Axolotl YAML
fragment, TRL ``SFTTrainer`` ``peft_config`` code, or plain JSON; all from ``Diagnosis.lora_config``
(the one PEFT-config builder). With a model, the config is first dry-run against its
``named_modules()`` (built on the meta device from its config: no weights), so a target or band
layer that matches nothing fails here instead of silently training a smaller adapter.
"""
from __future__ import annotations

import json
import os
import pprint
from dataclasses import dataclass
from pathlib import Path

from .diagnosis import Diagnosis
from .errors import ConfigError
from .io import atomic_write_text, output_dir
from .models import arch_for, meta_model, model_config
from .strategies.lora import match_lora_targets

FORMATS = {"peft": "peft-lora", "axolotl": "axolotl-lora.yaml", "trl": "trl_peft_config.py", "json": "lora_config.json"}
LORA_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules", "target_parameters", "exclude_modules", "layers_to_transform",
             "layers_pattern", "fan_in_fan_out", "modules_to_save", "bias", "task_type")


@dataclass
class Exported:
    path: Path
    config: object                      # the peft LoraConfig
    matched: dict[str, int] | None      # modules matched per target (None: no --model dry run)


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
    family = arch_for(kind).family
    if family != d.family:
        raise ConfigError(f"the diagnosis was made on a {d.family} model ({d.model}) but --model {model_name} is "
                          f"{kind}; its layers and module names differ: diagnose that model first")
    return match_lora_targets(meta_model(model_name, d.task_type), config)


def _header(d: Diagnosis, comment: str = "#") -> str:
    return (f"{comment} inflora: LoRA on the inflection band {d.inflection_layers} of {d.model} "
            f"({d.family}, rule {d.selection.get('rule', '?')}, {d.task_type})\n")


def _axolotl(d: Diagnosis, kw: dict) -> str:
    import yaml

    if kw.get("exclude_modules"):
        raise ConfigError(f"these targets need PEFT's exclude_modules {kw['exclude_modules']}, which an Axolotl "
                          "config cannot express; use --format peft or name other --lora-targets")
    fragment = {"adapter": "lora", "lora_r": kw["r"], "lora_alpha": kw["lora_alpha"], "lora_dropout": kw["lora_dropout"],
                "lora_target_modules": kw["target_modules"], "peft_layers_to_transform": kw["layers_to_transform"],
                "peft_layers_pattern": [kw["layers_pattern"]]}
    if kw.get("target_parameters"):  # fused MoE experts; Axolotl passes these to LoraConfig.target_parameters
        fragment["lora_target_parameters"] = kw["target_parameters"]
    if kw.get("fan_in_fan_out"):
        fragment["lora_fan_in_fan_out"] = True
    if kw.get("modules_to_save"):
        fragment["lora_modules_to_save"] = kw["modules_to_save"]
    return _header(d) + "# merge into your Axolotl config\n" + yaml.safe_dump(fragment, sort_keys=False)


def _trl(d: Diagnosis, kw: dict) -> str:
    return (_header(d) + "# use as SFTTrainer(model=..., train_dataset=..., peft_config=peft_config)\n"
            "from peft import LoraConfig\n\npeft_config = LoraConfig(**" + pprint.pformat(kw, sort_dicts=False) + ")\n")


def _json(d: Diagnosis, kw: dict) -> str:
    meta = {"model": d.model, "family": d.family, "task_type": d.task_type, "band": d.inflection_layers,
            "rule": d.selection.get("rule"), "stability": d.stability}
    return json.dumps({"inflora": meta, "lora_config": kw}, indent=2) + "\n"


def export_config(d: Diagnosis, fmt: str, out: str | os.PathLike | None = None, *, model: str | None = None,
                  **lora) -> Exported:
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
