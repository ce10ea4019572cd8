"""``diagnose(model, data) -> Diagnosis``: per-layer profiles, the inflection band and its stability."""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn
from tqdm.auto import tqdm

from .data import (CAUSAL_LM, TextDataset, instruction_probe_batches, is_user_file, load_any, probe_batches,
                   task_type)
from .diagnosis_schema import FORMAT_VERSION
from .errors import ConfigError, DataError
from .io import atomic_write_text, versions
from .validate import check_values
from .metrics.accumulate import gather_batches
from .models import arch_for, get_blocks, hf_model, load_model, set_tower
from .models.moe import moe_layout
from .probe import LayerProbe, probe_step
from .select import (
    RULES, RuleInputs, bootstrap_stability, local_maxima, rule_needs, rule_parameters, score_rules, select_layers, ski_terms,
)
from .strategies.lora import head_modules, task_type_of

# Per-layer probe results that rules may read (``select.RuleInputs.profiles``).
PROFILE_KEYS = ("attention_entropy", "activation_grad_norm", "param_grad_norm", "io_cka")


@dataclass
class Diagnosis:
    """Everything one probe run measured, in plain attributes (see ``to_json`` for the file format)."""

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
    rules: dict = field(default_factory=dict)   # --rules: every rule's scores and K-block selection, overlap
    task_type: str = "classification"   # or "causal-lm": what the loss was and what LoRA should adapt
    head_modules: list[str] = field(default_factory=list)  # heads that stay trainable (PEFT modules_to_save)
    output: dict = field(default_factory=dict)  # output saturation (metrics.output); {} in older files
    moe: dict = field(default_factory=dict)  # MoE layout (models.moe.MoeLayout.to_dict); {} for dense models
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
        from .diagnosis_schema import DiagnosisFile
        from .validate import check_schema, load_json

        path = Path(path)
        if not path.is_file():
            raise DataError(f"diagnosis file {path} does not exist")
        data = load_json(path)
        if not isinstance(data, dict) or "num_layers" not in data:
            raise DataError(f"{path}: (top level): not a diagnosis file (no num_layers)")
        check_schema(path, data, DiagnosisFile)
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
        return lora_config(self.family, self.inflection_layers, **kw)


def _nan_for_null(obj):
    """JSON has no NaN (``to_json`` writes null): read the output section's nulls back as NaN."""
    if obj is None:
        return math.nan
    if isinstance(obj, dict):
        return {k: _nan_for_null(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_for_null(v) for v in obj]
    return obj


def _as_batches(data, tokenizer, *, batches, batch_size, max_length, seed, causal_lm):
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return data[:batches]
    if isinstance(data, list):
        raise DataError("no probe batches were given (empty list)")
    if not isinstance(data, TextDataset):
        raise DataError(f"cannot diagnose on {type(data).__name__}; pass a task name, a TextDataset or a list of batches")
    if tokenizer is None:
        raise ConfigError("a tokenizer is needed to encode a dataset; pass tokenizer=")
    if task_type(data) == CAUSAL_LM:
        if not causal_lm:
            raise ConfigError(f"{data.name} is instruction data: it needs a causal LM (load_model(..., task='causal-lm'))")
        return instruction_probe_batches(data, tokenizer, batches=batches, batch_size=batch_size,
                                         max_length=max_length, seed=seed)
    return probe_batches(data, tokenizer, batches=batches, batch_size=batch_size, max_length=max_length,
                         seed=seed, causal_lm=causal_lm)


def load_model_for(name: str, data, seed: int | None = None, tower: str = "language"):
    """``(model, tokenizer)`` for ``data``: a causal LM for instruction data, else a classifier with
    as many labels as the data has (at least two). With ``seed`` a newly initialised head is the
    same on every run and on every process (under DDP/FSDP the ranks must hold one model)."""
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    if task_type(data) == CAUSAL_LM:
        return load_model(name, task=CAUSAL_LM, tower=tower)
    return load_model(name, num_labels=max(getattr(data, "num_labels", 2), 2), tower=tower)


def _resolve_inputs(model, data, tokenizer, *, split, data_dir, columns, fsdp, device, precision, seed, tower=None):
    """Load what was given by name: the data (``load_any``; a user file whole unless ``split`` says)
    and a model that fits it; shard the model over the processes when ``fsdp``. Returns
    (model, tokenizer, data, split, device), device None once FSDP has placed the shards."""
    if isinstance(data, (str, os.PathLike)):
        split = split or ("all" if is_user_file(data) else "validation")
        data = load_any(data, split, data_dir, **(columns or {}))
    if isinstance(model, str):
        model, tokenizer = load_model_for(model, data, seed, tower or "language")
    elif tower is not None:
        set_tower(model, tower)
    if fsdp:
        from .devices import resolve_device
        from .models.sharding import fsdp_shard

        model, device = fsdp_shard(model, resolve_device(device or "auto", precision).device), None
    return model, tokenizer, data, split or "validation", device


def _shard(batches: list, placement: dict) -> list:
    """Data-parallel (DDP-style): rank r probes batches r, r + world, …; under FSDP every rank probes
    every batch (the model is what is split), so each gradient is one batch's full gradient."""
    import torch.distributed as dist

    world = placement["world_size"]
    if world == 1 or placement["sharding"] == "fsdp":
        return batches
    if world > len(batches):
        raise ConfigError(f"{world} processes but only {len(batches)} probe batch(es): every process needs at "
                          f"least one; pass --batches {world} or more, or start fewer processes")
    return batches[dist.get_rank() :: world]


def _place(model: nn.Module, device: str | None, precision: str) -> dict:
    """Move ``model`` to the chosen device (``None``: leave it where it is) and check the precision
    there; returns what diagnosis.json records about where the probe ran."""
    from .devices import check_precision, is_fsdp, launched_world_size, resolve_device

    sharded = is_fsdp(model)
    if device is not None and not sharded:
        model.to(resolve_device(device, precision).device)
    here = next(model.parameters()).device
    check_precision(precision, here.type)
    world = launched_world_size()
    return {"device": str(here), "precision": precision, "world_size": world,
            "sharding": "fsdp" if sharded else ("ddp" if world > 1 else None)}


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
    check_values(batches=batches, batch_size=batch_size, max_length=max_length, resamples=resamples, seed=seed,
                 entropy_queries=entropy_queries, head_warmup=head_warmup)
    RULES.get(rule)
    for name in rules or []:
        RULES.get(name)
    params = rule_parameters(rule, rule_params)  # recorded in ``selection.parameters``
    ski_params = {**rule_parameters("ski"), **params}  # SKI is reported with the alpha/variant the rule used
    name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "name_or_path", type(model).__name__)
    data_name = str(data) if isinstance(data, (str, os.PathLike)) else getattr(data, "name", "batches")
    model, tokenizer, data, split, device = _resolve_inputs(model, data, tokenizer, split=split, data_dir=data_dir,
                                                            columns=columns, fsdp=fsdp, device=device, precision=precision,
                                                            seed=seed, tower=tower)
    inner = hf_model(model)
    spec = arch_for(inner)
    if spec.tower != "language":
        raise ConfigError(f"diagnosing the {spec.tower} tower of {spec.base_family} needs image inputs, which inflora's "
                          "data loaders do not feed (text-only data serves the language tower): use --tower language")
    task_type = task_type_of(inner)
    causal_lm = spec.causal and task_type == "causal-lm"
    moe = moe_layout(inner)
    probe_set = _as_batches(data, tokenizer, batches=batches, batch_size=batch_size,
                            max_length=max_length, seed=seed, causal_lm=causal_lm)
    placement = _place(model, device, precision)
    warmed = _warm_head(model, tokenizer, head_warmup, warmup_data, data_name, task_type,
                        dict(batch_size=batch_size, max_length=max_length, seed=seed, data_dir=data_dir,
                             columns=columns)) if head_warmup else None
    mine = _shard(probe_set, placement)
    was_training = model.training
    saved_grads = {p: p.grad for p in model.parameters()}
    model.train(dropout)
    losses = []
    try:
        entropy_options = {"queries": entropy_queries, "seed": seed}
        extra = ["block_io"] if any("forward" in rule_needs(n) for n in rules or []) else []
        ffn = ["moe"] if moe else ["dormant"]  # dormant units read a dense FFN; MoE blocks get the router/expert probe
        with LayerProbe(model, ["attention_entropy", "activation_grad", "param_grad", *ffn, "output", *extra], attention=attention,
                        attention_entropy=entropy_options, block_io={"pooling": "last" if spec.causal else "mean"},
                        param_grad={"sparse_embeddings": True}) as probe:
            attention_mode = probe.attention_mode
            for batch in tqdm(mine, desc="diagnose", unit="batch", disable=not progress):
                losses.append(probe_step(model, probe, batch, precision))
            if placement["sharding"] == "ddp":
                probe.gather()
                losses = gather_batches(losses)
            layers = probe.layer_results()
            groups = probe.group_results()
            output = probe.summaries().get("output", {})
            n_batches = probe.num_batches()

            def profile_for(idx):
                rows = probe.layer_results(idx, only=("attention_entropy", "activation_grad"))
                return [r["attention_entropy"] for r in rows], [r["activation_grad_norm"] for r in rows]

            def profiles_for(draws):
                return probe.resampled_profiles(draws, ("attention_entropy", "activation_grad"))

            flags = _flags(layers, losses, output) + _structure_flags(moe)
            if spec.entropy_note:
                flags.append(f"attention entropy ({spec.family}): {spec.entropy_note}")
            terms, chosen, stability = _select_band((profile_for, profiles_for), n_batches, len(layers), rule, params,
                                                    ski_params, resamples, seed, flags)
    finally:
        model.train(was_training)
        for p, g in saved_grads.items():  # the caller's gradients (usually none) are put back
            p.grad = g
    if not chosen and all(map(math.isfinite, terms["ski"])):
        flags.append(f"rule {rule!r} selected no layer (the SKI profile has no strict peak: is it flat? "
                     "--param plateaus=true counts a flat top as a peak)")
    ski = [float(v) for v in terms["ski"]]
    for row, s in zip(layers, ski):
        row["ski"] = s
    compared = _compare_rules(model, rules, layers, chosen, budget, seed, {rule: params}, flags) if rules else {}
    return Diagnosis(
        model=str(name), family=spec.family, num_layers=len(layers), layers=layers, inflection_layers=chosen,
        ski=ski, entropy_term=[float(v) for v in terms["entropy_term"]], grad_term=[float(v) for v in terms["grad_term"]],
        peaks=local_maxima(ski, ski_params["boundary"], ski_params["plateaus"]) if all(map(math.isfinite, ski)) else [],
        stability=list(stability), selection={"rule": rule, "parameters": params, "stability": list(stability), "resamples": resamples,
                                              "ski": {k: ski_params[k] for k in ("alpha", "variant")}},
        groups=groups, lora_targets=list(spec.lora_targets),
        config={"split": split, "batches": batches, "batch_size": batch_size, "max_length": max_length, "seed": seed,
                "dropout": dropout, "probe_batches": n_batches, "attention": attention_mode,
                "entropy_queries": entropy_queries, "mean_loss": sum(losses) / len(losses) if losses else math.nan,
                "data": data_name, **placement, **({"head_warmup": warmed} if warmed else {})},
        flags=flags, rules=compared, task_type=task_type, output=output,
        head_modules=head_modules(inner) if task_type == "classification" else [],
        moe=moe.to_dict() if moe else {},
    )


def _select_band(profile_fns, n_batches: int, n_layers: int, rule: str, params: dict, ski_params: dict,
                 resamples: int, seed: int, flags: list[str]):
    """SKI terms, the rule's band and its bootstrap stability; a profile the rule cannot score (e.g.
    non-finite) becomes a flag and NaN terms rather than an exception, so the diagnosis still reports.
    ``profile_fns``: (profile of a batch list, profiles of many resamples at once)."""
    profile_for, profiles_for = profile_fns
    entropy, grad = profile_for(None)
    try:
        terms = ski_terms(entropy, grad, ski_params["alpha"], ski_params["variant"])
        chosen = select_layers(rule, entropy, grad, **params)
        stability = bootstrap_stability(profile_for, n_batches, n_layers, rule, params, resamples=resamples, seed=seed,
                                        profiles_for=profiles_for)
    except DataError as exc:
        flags.append(str(exc))
        nan = [math.nan] * n_layers
        return {"ski": nan, "entropy_term": nan, "grad_term": nan}, [], nan
    return terms, chosen, stability


def _compare_rules(model, rules, layers, chosen, budget, seed, params, flags) -> dict:
    """Every requested rule at K blocks (``budget`` layers=K, else the band's size), on the probe's
    profiles and the model's weights; with ``params=N``, each rule's rank for N LoRA parameters."""
    from .strategies.budget import Budget

    budget = budget or Budget()
    k = budget.layers or len(chosen)
    if k == 0:
        flags.append("rules not compared: the band is empty, so give the budget explicitly (--budget layers=K)")
        return {}
    profiles = {key: [r[key] for r in layers] for key in PROFILE_KEYS if all(key in r for r in layers)}
    return _scored(model, rules, RuleInputs(len(layers), blocks=get_blocks(hf_model(model)), profiles=profiles, seed=seed), k, budget, params)


def _scored(model, rules, inputs, k, budget, params=None) -> dict:
    from .strategies.budget import match_budget

    result = score_rules(rules, inputs, k, params)
    result["budget"] = {**budget.to_dict(), "k": k}
    selections = {n: r["selected"] for n, r in result["rules"].items()}
    for name, sizes in match_budget(hf_model(model), selections, budget).items():
        result["rules"][name].update(sizes)
    return result


def _warm_head(model, tokenizer, steps: int, warmup_data, data_name: str, task_type: str, opts: dict) -> dict:
    from .strategies.head_warmup import warm_head

    if task_type != "classification":
        raise ConfigError("--head-warmup fits a classification head; this model has none")
    if warmup_data is None:
        if data_name == "batches":
            raise ConfigError("--head-warmup needs training data: give the task by name or pass warmup_data")
        warmup_data = load_any(data_name, "train", opts["data_dir"], **(opts["columns"] or {}))
    batches = probe_batches(warmup_data, tokenizer, batches=min(steps, 64), batch_size=opts["batch_size"],
                            max_length=opts["max_length"], seed=opts["seed"] + 1)
    return warm_head(model, batches, steps)


def score_without_data(model: nn.Module, rules: list[str], budget=None, seed: int = 0) -> dict:
    """Weight-only rules (and ``random``/``all``) without data and without a backward pass; the
    budget must name K (``layers=K``, or ``layers=K,params=N``)."""
    from .select import check_rules
    from .strategies.budget import Budget

    budget = budget or Budget()
    check_values(seed=seed)
    check_rules(rules, {"weights"})
    inner = hf_model(model)
    blocks = get_blocks(inner)
    k = budget_blocks(budget)
    return _scored(inner, rules, RuleInputs(len(blocks), blocks=blocks, seed=seed), k, budget)


def budget_blocks(budget) -> int:
    """K of a budget scored without data: there is no band to take it from, so it must be given."""
    if budget.layers is None:
        raise ConfigError("without data there is no band to size the budget: give --budget layers=K "
                          "(with a parameter budget: layers=K,params=N)")
    return budget.layers


def _structure_flags(moe) -> list[str]:
    """What this model's structure keeps the probe from measuring, said instead of left out silently
    (what the attention entropy cannot measure is the spec's ``entropy_note``, flagged beside it)."""
    if moe:
        return ["dormant FFN units are measured on dense blocks and on shared experts only, not on routed "
                "experts (see the MoE columns instead)"]
    return []


def _flags(layers: list[dict], losses: list[float], output: dict) -> list[str]:
    flags = []
    if output.get("nonfinite_batches"):
        flags.append(f"output: {output['nonfinite_batches']} batch(es) with non-finite logits, left out of the output section")
    bad_loss = sum(1 for v in losses if not math.isfinite(v))
    if bad_loss:
        flags.append(f"{bad_loss} probe batch(es) had a non-finite loss")
    for row in layers:
        for key in ("activation_grad_nonfinite_batches", "param_grad_nonfinite_batches"):
            if row.get(key):
                flags.append(f"layer {row['layer']}: {row[key]} batch(es) with non-finite {key.split('_nonfinite')[0].replace('_', ' ')}s")
    return flags
