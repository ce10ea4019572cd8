"""``diagnose(model, data) -> Diagnosis``: per-layer profiles, the inflection band and its stability."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from .diagnosis_schema import FORMAT_VERSION
from .diagnosis_steps import (
    Band,
    DiagnoseOptions,
    Measured,
    as_batches,
    compare_rules,
    given_names,
    language_spec,
    measure,
    measurement_flags,
    open_probe,
    place,
    probing,
    profile_reader,
    resolve_inputs,
    scored,
    select_band,
    shard,
    warm_head,
)
from .diagnosis_steps import as_batches as _as_batches  # noqa: F401  (the old name; tests build batches with it)
from .diagnosis_steps import load_model_for  # noqa: F401  (public: experiments load a model for a task with it)
from .diagnosis_steps import weight_inputs  # noqa: F401  (public: the rules' inputs read from a model's weights)
from .diagnosis_steps import PROFILE_KEYS  # noqa: F401  (public: the profile keys a rule may read)
from .errors import ConfigError, DataError
from .io import atomic_write_text, versions
from .validate import check_values
from .models import arch_for, hf_model
from .models.moe import moe_layout
from .select import local_maxima
from .strategies.lora import head_modules, task_type_of


@dataclass
class Diagnosis:
    """Everything one probe run measured, in plain attributes (see ``to_json`` for the file format).

    Each fact is held once: ``layers`` holds what the probe measured per layer; ``ski`` (with its two
    terms) and ``stability`` are the selection's per-layer lists, and ``selection`` says how it was
    made (rule, parameters, resamples)."""

    model: str
    family: str
    num_layers: int
    layers: list[dict]
    inflection_layers: list[int]
    ski: list[float]
    entropy_term: list[float]
    grad_term: list[float]
    peaks: list[int]
    stability: list[float]
    selection: dict
    groups: dict
    lora_targets: list[str]
    config: dict
    versions: dict = field(default_factory=versions)
    flags: list[str] = field(default_factory=list)
    rules: dict = field(default_factory=dict)  # --rules: every rule's scores and K-block selection, overlap
    task_type: str = "classification"  # or "causal-lm": what the loss was and what LoRA should adapt
    head_modules: list[str] = field(default_factory=list)  # heads that stay trainable (PEFT modules_to_save)
    output: dict = field(default_factory=dict)  # output saturation (metrics.output); {} in older files
    moe: dict = field(default_factory=dict)  # MoE layout (models.moe.MoeLayout.to_dict); {} for dense models
    structure: dict = field(default_factory=dict)  # the layout the probe used (ArchSpec.to_dict); {} in older files
    format_version: int = FORMAT_VERSION  # of diagnosis.json; files without it are version 1

    def profile(self, key: str) -> list[float]:
        return [row[key] for row in self.layers]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        from .io import _jsonable

        text = json.dumps(_jsonable(self.to_dict()), indent=2, allow_nan=False) + "\n"
        if path is not None:
            atomic_write_text(path, text)
        return text

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "Diagnosis":
        """Read a diagnosis file, checked against ``diagnosis_schema.DiagnosisFile`` first: the file
        may come from someone else, and its strings end up in exported configs and reports."""
        from .diagnosis_schema import DiagnosisFile, from_version_1
        from .validate import check_schema, load_json

        path = Path(path)
        if not path.is_file():
            raise DataError(f"diagnosis file {path} does not exist")
        data = load_json(path)
        if not isinstance(data, dict) or "num_layers" not in data:
            raise DataError(f"{path}: (top level): not a diagnosis file (no num_layers)")
        check_schema(path, data, DiagnosisFile)
        if data.get("format_version", 1) == 1:
            data = from_version_1(data)
        data["layers"] = [{k: math.nan if v is None else v for k, v in row.items()} for row in data["layers"]]
        data["output"] = _nan_for_null(data.get("output", {}))
        return cls(**data)

    def lora_config(self, **kw):
        """A PEFT ``LoraConfig`` that adapts only the inflection band (defaults: ``LORA_DEFAULTS``;
        ``targets='mlp'`` etc. as in ``inject_lora``), built by the same function as ``inject_lora``."""
        from .strategies.lora import TASK_TYPES, lora_config

        if not self.inflection_layers:
            raise ConfigError("this diagnosis selected no layers (see its flags); pass layers explicitly")
        kw.setdefault("modules_to_save", self.head_modules or None)
        kw.setdefault("task_type", TASK_TYPES.get(self.task_type, "SEQ_CLS"))
        if self.moe:
            from .models.moe import MoeLayout

            kw.setdefault("moe", MoeLayout.from_dict(self.moe))
        return lora_config(self.spec(), self.inflection_layers, **kw)

    def spec(self):
        """The layout (``ArchSpec``) the probe used, as recorded; a file written before version 2
        records none, and then the family's is looked up (a table row, or discovered on a tiny model
        of that type, which may differ from the diagnosed model's own configuration)."""
        from .models import ArchSpec

        return ArchSpec.from_dict(self.family, self.structure) if self.structure else arch_for(self.family)


def _nan_for_null(obj):
    """JSON has no NaN (``to_json`` writes null): read the output section's nulls back as NaN."""
    if obj is None:
        return math.nan
    if isinstance(obj, dict):
        return {k: _nan_for_null(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_for_null(v) for v in obj]
    return obj


def diagnose(
    model: nn.Module | str,
    data,
    tokenizer=None,
    *,
    split: str | None = None,
    batches: int = 8,
    batch_size: int = 32,
    max_length: int = 64,
    rule: str = "ski",
    rule_params: dict | None = None,
    resamples: int = 200,
    seed: int = 0,
    dropout: bool = False,
    data_dir: str | None = None,
    columns: dict | None = None,
    progress: bool = True,
    attention: str | None = None,
    entropy_queries: int | None = None,
    rules: list[str] | None = None,
    budget=None,
    device: str | None = None,
    precision: str = "fp32",
    fsdp: bool = False,
    head_warmup: int = 0,
    warmup_data=None,
    tower: str | None = None,
) -> Diagnosis:
    """Probe ``model`` (a model, or a name/path loaded here) on target-domain ``data`` (a task name
    or data file path, read with ``load_any``; a ``TextDataset``; or a list of batches) and select
    the inflection band with ``rule``. ``split`` defaults to validation for a task, the whole file for
    a user file; ``columns`` names a file's columns (``text_column``, ``label_column``,
    ``prompt_column``, ``completion_column``, ``messages_column``; see ``load_any``). The result
    names the model and data as they were given. Parameters are never updated; the model's mode and
    gradients are restored. ``device`` (auto|cpu|cuda|cuda:N|mps; None keeps the model where it is)
    and ``precision`` (fp32|bf16|fp16 autocast) follow ``inflora.devices``; ``fsdp`` shards the model
    over the launched processes first. Under ``torch.distributed`` each rank probes its share of the
    batches (FSDP-sharded model: every batch, full-gradient norms) and all ranks return the same result.

    ``attention``: ``'streaming'`` (the default where the family allows it: SDPA with the entropy
    streamed beside it, memory linear in context length) or ``'eager'`` (attention maps).
    ``entropy_queries=N`` estimates the entropy from N sampled query positions per sequence (seeded
    by ``seed``); each layer then also reports its standard error. ``rules`` (e.g. ``["ski", "kappa",
    "top-grad"]``) are also scored side by side at ``budget`` (a ``strategies.budget.Budget``; default
    K = the band's size). ``head_warmup=N`` first trains the classification head alone for N steps on
    ``warmup_data`` (default: the task's train split), so the probe's gradients are not those of a
    random head; this one change to the model is made in place and recorded in ``config``. ``tower``
    (``language`` or ``vision``) picks the block list of a multimodal model; the band, and every
    config exported from it, name that tower's blocks (text-only data serves the language tower)."""
    opts = DiagnoseOptions(
        split=split,
        batches=batches,
        batch_size=batch_size,
        max_length=max_length,
        rule=rule,
        rule_params=rule_params,
        resamples=resamples,
        seed=seed,
        dropout=dropout,
        data_dir=data_dir,
        columns=columns,
        progress=progress,
        attention=attention,
        entropy_queries=entropy_queries,
        rules=rules,
        budget=budget,
        device=device,
        precision=precision,
        fsdp=fsdp,
        head_warmup=head_warmup,
        tower=tower,
    )
    name, data_name = given_names(model, data)
    model, tokenizer, data, split, device = resolve_inputs(model, data, tokenizer, opts)
    inner = hf_model(model)
    spec = language_spec(inner)
    task = task_type_of(inner)
    moe = moe_layout(inner)
    probe_set = as_batches(
        data,
        tokenizer,
        batches=batches,
        batch_size=batch_size,
        max_length=max_length,
        seed=seed,
        causal_lm=spec.causal and task == "causal-lm",
    )
    placement = place(model, device, precision)
    warmed = warm_head(model, tokenizer, warmup_data, data_name, task, opts) if head_warmup else None
    mine = shard(probe_set, placement)
    with probing(model, dropout), open_probe(model, spec, moe, opts) as probe:
        measured = measure(model, probe, mine, placement, opts)
        flags = measurement_flags(measured, moe, spec)
        band = select_band(profile_reader(probe), measured.num_batches, len(measured.layers), opts, flags)
    if not band.chosen and all(map(math.isfinite, band.terms["ski"])):
        flags.append(
            f"rule {rule!r} selected no layer (the SKI profile has no strict peak: is it flat? "
            "--param plateaus=true counts a flat top as a peak)"
        )
    compared = compare_rules(model, measured.layers, band.chosen, opts, flags) if rules else {}
    where = {"data": data_name, **placement, **({"head_warmup": warmed} if warmed else {})}
    return _assemble(
        name, spec, inner, task, moe, opts, measured, band, _config(opts, measured, split, where), flags, compared
    )


def _assemble(
    name: str,
    spec,
    inner,
    task: str,
    moe,
    opts: DiagnoseOptions,
    measured: Measured,
    band: Band,
    config: dict,
    flags: list[str],
    compared: dict,
) -> Diagnosis:
    """The ``Diagnosis`` of one probe run: the measured profiles, the band with its SKI terms and
    stability, the settings the run used (``config``), as diagnosis.json stores them."""
    ski, ski_params, stability = [float(v) for v in band.terms["ski"]], opts.ski_params, list(band.stability)
    return Diagnosis(
        model=name,
        family=spec.family,
        num_layers=len(measured.layers),
        layers=measured.layers,
        inflection_layers=band.chosen,
        ski=ski,
        entropy_term=[float(v) for v in band.terms["entropy_term"]],
        grad_term=[float(v) for v in band.terms["grad_term"]],
        peaks=local_maxima(ski, ski_params["boundary"], ski_params["plateaus"]) if all(map(math.isfinite, ski)) else [],
        stability=stability,
        selection={
            "rule": opts.rule,
            "parameters": opts.params,
            "resamples": opts.resamples,
            "ski": {k: ski_params[k] for k in ("alpha", "variant")},
        },
        groups=measured.groups,
        lora_targets=list(spec.lora_targets),
        config=config,
        flags=flags,
        rules=compared,
        task_type=task,
        output=measured.output,
        head_modules=head_modules(inner) if task == "classification" else [],
        moe=moe.to_dict() if moe else {},
        structure=spec.to_dict(),
    )


def _config(opts: DiagnoseOptions, measured: Measured, split: str, where: dict) -> dict:
    """diagnosis.json's ``config``: how the probe ran, so a reader can repeat it (``where``: the data
    as given, the placement and the head warm-up, worked out on the way)."""
    return {
        "split": split,
        "batches": opts.batches,
        "batch_size": opts.batch_size,
        "max_length": opts.max_length,
        "seed": opts.seed,
        "dropout": opts.dropout,
        "probe_batches": measured.num_batches,
        "attention": measured.attention_mode,
        "entropy_queries": opts.entropy_queries,
        "mean_loss": measured.mean_loss,
        **where,
    }


def score_without_data(model: nn.Module, rules: list[str], budget=None, seed: int = 0) -> dict:
    """Weight-only rules (and ``random``/``all``) without data and without a backward pass; the
    budget must name K (``layers=K``, or ``layers=K,params=N``)."""
    from .select import check_rules
    from .strategies.budget import Budget

    budget = budget or Budget()
    check_values(seed=seed)
    check_rules(rules, {"weights"})
    k = budget_blocks(budget)
    return scored(hf_model(model), rules, weight_inputs(model, seed=seed), k, budget)


def budget_blocks(budget) -> int:
    """K of a budget scored without data: there is no band to take it from, so it must be given."""
    if budget.layers is None:
        raise ConfigError(
            "without data there is no band to size the budget: give --budget layers=K "
            "(with a parameter budget: layers=K,params=N)"
        )
    return budget.layers
