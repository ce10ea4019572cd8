"""The steps of ``diagnosis.diagnose``, one job each, in the order it runs them: check the options,
load what was given by name, place the model, warm the head, probe, select the band, compare rules.

``diagnose`` keeps its keyword API (scikit-learn style); inside, the checked options travel as one
``DiagnoseOptions`` so that no step takes a dozen keywords. Nothing here builds a ``Diagnosis``:
that stays beside the class in ``diagnosis.py``.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import nn
from tqdm.auto import tqdm

from .data import CAUSAL_LM, TextDataset, instruction_probe_batches, is_user_file, load_any, probe_batches, task_type
from .errors import ConfigError, DataError
from .metrics.accumulate import gather_batches
from .models import arch_for, get_blocks, hf_model, load_model, set_tower
from .models.loading import require_text_tower
from .probe import LayerProbe, probe_step
from .select import (
    RULES,
    RuleInputs,
    bootstrap_stability,
    rule_needs,
    rule_parameters,
    score_rules,
    select_layers,
    ski_terms,
)
from .validate import check_values

# Per-layer probe results that rules may read (``select.RuleInputs.profiles``).
PROFILE_KEYS = ("attention_entropy", "activation_grad_norm", "param_grad_norm", "io_cka")


@dataclass(frozen=True)
class DiagnoseOptions:
    """``diagnose``'s keyword options, checked once on creation (ranges from ``validate.BOUNDS``,
    rule names from ``select.RULES``) before any model or data is loaded. No defaults here: the
    defaults are those of ``diagnose``'s signature, written once."""

    split: str | None
    batches: int
    batch_size: int
    max_length: int
    rule: str
    rule_params: dict | None
    resamples: int
    seed: int
    dropout: bool
    data_dir: str | None
    columns: dict | None
    progress: bool
    attention: str | None
    entropy_queries: int | None
    rules: list[str] | None
    budget: object
    device: str | None
    precision: str
    fsdp: bool
    head_warmup: int
    tower: str | None
    params: dict = field(init=False)  # the rule's parameters, defaults filled in (``selection.parameters``)
    ski_params: dict = field(init=False)  # SKI is reported with the alpha/variant the rule used

    def __post_init__(self) -> None:
        check_values(
            batches=self.batches,
            batch_size=self.batch_size,
            max_length=self.max_length,
            resamples=self.resamples,
            seed=self.seed,
            entropy_queries=self.entropy_queries,
            head_warmup=self.head_warmup,
        )
        RULES.get(self.rule)
        for name in self.rules or []:
            RULES.get(name)
        params = rule_parameters(self.rule, self.rule_params)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "ski_params", {**rule_parameters("ski"), **params})


def given_names(model, data) -> tuple[str, str]:
    """The model and data as the caller gave them (a name, a path, or what the object calls itself):
    taken before loading, since the diagnosis names what was asked for, not what it became."""
    config = getattr(model, "config", None)
    name = model if isinstance(model, str) else getattr(config, "name_or_path", type(model).__name__)
    data_name = str(data) if isinstance(data, (str, os.PathLike)) else getattr(data, "name", "batches")
    return str(name), data_name


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


def resolve_inputs(model, data, tokenizer, opts: DiagnoseOptions):
    """Load what was given by name: the data (``load_any``; a user file whole unless ``split`` says)
    and a model that fits it; shard the model over the processes when ``fsdp``. Returns
    (model, tokenizer, data, split, device), device None once FSDP has placed the shards."""
    split, device = opts.split, opts.device
    if isinstance(data, (str, os.PathLike)):
        split = split or ("all" if is_user_file(data) else "validation")
        data = load_any(data, split, opts.data_dir, **(opts.columns or {}))
    if isinstance(model, str):
        model, tokenizer = load_model_for(model, data, opts.seed, opts.tower or "language")
    elif opts.tower is not None:
        set_tower(model, opts.tower)
    if opts.fsdp:
        from .devices import resolve_device
        from .models.sharding import fsdp_shard

        model, device = fsdp_shard(model, resolve_device(device or "auto", opts.precision).device), None
    return model, tokenizer, data, split or "validation", device


def language_spec(inner: nn.Module):
    """The model's architecture spec, refused for a vision tower: the data loaders feed text only."""
    return require_text_tower(arch_for(inner))


def as_batches(data, tokenizer, *, batches: int, batch_size: int, max_length: int, seed: int, causal_lm: bool) -> list:
    """The probe's batches: given as a list of batches (the first ``batches`` of them), or encoded
    from a dataset the way the model's loss needs (instruction data only for a causal LM)."""
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return data[:batches]
    if isinstance(data, list):
        raise DataError("no probe batches were given (empty list)")
    if not isinstance(data, TextDataset):
        raise DataError(
            f"cannot diagnose on {type(data).__name__}; pass a task name, a TextDataset or a list of batches"
        )
    if tokenizer is None:
        raise ConfigError("a tokenizer is needed to encode a dataset; pass tokenizer=")
    sizes = dict(batches=batches, batch_size=batch_size, max_length=max_length, seed=seed)
    if task_type(data) == CAUSAL_LM:
        if not causal_lm:
            raise ConfigError(
                f"{data.name} is instruction data: it needs a causal LM (load_model(..., task='causal-lm'))"
            )
        return instruction_probe_batches(data, tokenizer, **sizes)
    return probe_batches(data, tokenizer, **sizes, causal_lm=causal_lm)


def place(model: nn.Module, device: str | None, precision: str) -> dict:
    """Move ``model`` to the chosen device (``None``: leave it where it is) and check the precision
    there; returns what diagnosis.json records about where the probe ran."""
    from .devices import check_precision, is_fsdp, launched_world_size, resolve_device

    sharded = is_fsdp(model)
    if device is not None and not sharded:
        model.to(resolve_device(device, precision).device)
    here = next(model.parameters()).device
    check_precision(precision, here.type)
    world = launched_world_size()
    return {
        "device": str(here),
        "precision": precision,
        "world_size": world,
        "sharding": "fsdp" if sharded else ("ddp" if world > 1 else None),
    }


def warm_head(model, tokenizer, warmup_data, data_name: str, task: str, opts: DiagnoseOptions) -> dict:
    """Fit the classification head alone for ``head_warmup`` steps, so the probe's gradients are
    not those of a random head; on ``warmup_data``, else the named task's train split."""
    from .strategies.head_warmup import warm_head as fit_head

    if task != "classification":
        raise ConfigError("--head-warmup fits a classification head; this model has none")
    if warmup_data is None:
        if data_name == "batches":
            raise ConfigError("--head-warmup needs training data: give the task by name or pass warmup_data")
        warmup_data = load_any(data_name, "train", opts.data_dir, **(opts.columns or {}))
    batches = probe_batches(
        warmup_data,
        tokenizer,
        batches=min(opts.head_warmup, 64),
        batch_size=opts.batch_size,
        max_length=opts.max_length,
        seed=opts.seed + 1,
    )
    return fit_head(model, batches, opts.head_warmup)


def shard(batches: list, placement: dict) -> list:
    """Data-parallel (DDP-style): rank r probes batches r, r + world, …; under FSDP every rank probes
    every batch (the model is what is split), so each gradient is one batch's full gradient."""
    import torch.distributed as dist

    world = placement["world_size"]
    if world == 1 or placement["sharding"] == "fsdp":
        return batches
    if world > len(batches):
        raise ConfigError(
            f"{world} processes but only {len(batches)} probe batch(es): every process needs at "
            f"least one; pass --batches {world} or more, or start fewer processes"
        )
    return batches[dist.get_rank() :: world]


@contextmanager
def probing(model: nn.Module, dropout: bool):
    """The model in the probe's mode (``train(dropout)``) for the block; afterwards its mode and
    the caller's gradients (usually none) are put back, whatever happened inside."""
    was_training = model.training
    saved_grads = {p: p.grad for p in model.parameters()}
    model.train(dropout)
    try:
        yield
    finally:
        model.train(was_training)
        for p, g in saved_grads.items():
            p.grad = g


def open_probe(model: nn.Module, spec, moe, opts: DiagnoseOptions) -> LayerProbe:
    """The probe with the diagnostics a diagnosis reports; block inputs/outputs only when a compared
    rule reads the forward pass, and the router/expert probe in place of dormant units on MoE blocks."""
    extra = ["block_io"] if any("forward" in rule_needs(n) for n in opts.rules or []) else []
    ffn = ["moe"] if moe else ["dormant"]  # dormant units read a dense FFN; MoE blocks get the router/expert probe
    return LayerProbe(
        model,
        ["attention_entropy", "activation_grad", "param_grad", *ffn, "output", *extra],
        attention=opts.attention,
        attention_entropy={"queries": opts.entropy_queries, "seed": opts.seed},
        block_io={"pooling": "last" if spec.causal else "mean"},
        param_grad={"sparse_embeddings": True},
    )


@dataclass
class Measured:
    """What one probe pass measured, gathered over the processes."""

    layers: list[dict]
    groups: dict
    output: dict
    num_batches: int
    losses: list[float]
    attention_mode: str
    unmeasured: dict  # blocks whose attention entropy could not be measured exactly, and why (else empty)

    @property
    def mean_loss(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else math.nan


def measure(model: nn.Module, probe: LayerProbe, batches: list, placement: dict, opts: DiagnoseOptions) -> Measured:
    """One forward and backward pass per batch; under DDP the per-batch records of every rank are
    gathered, so every rank holds the same results in the global batch order."""
    mode = probe.attention_mode
    losses = [
        probe_step(model, probe, batch, opts.precision)
        for batch in tqdm(batches, desc="diagnose", unit="batch", disable=not opts.progress)
    ]
    if placement["sharding"] == "ddp":
        probe.gather()
        losses = gather_batches(losses)
    summaries = probe.summaries()
    return Measured(
        probe.layer_results(),
        probe.group_results(),
        summaries.get("output", {}),
        probe.num_batches(),
        losses,
        mode,
        summaries.get("attention_entropy", {}),
    )


def profile_reader(probe: LayerProbe):
    """``(profile_for, profiles_for)``: ``idx -> (entropy, gradient)`` profiles over a subset of
    batches (None: all), and the same for many resamples at once (``draws``), for the bootstrap: it
    resamples batches, so it reads the probe's per-batch records again, all draws in one pass."""

    def profile_for(idx):
        rows = probe.layer_results(idx, only=("attention_entropy", "activation_grad"))
        return [r["attention_entropy"] for r in rows], [r["activation_grad_norm"] for r in rows]

    def profiles_for(draws):
        return probe.resampled_profiles(draws, ("attention_entropy", "activation_grad"))

    return profile_for, profiles_for


def measurement_flags(measured: Measured, moe, spec) -> list[str]:
    """What went wrong in the measurement and what this model's structure keeps it from measuring."""
    flags = _flags(measured.layers, measured.losses, measured.output) + _structure_flags(moe)
    if spec.entropy_note:
        flags.append(f"attention entropy ({spec.family}): {spec.entropy_note}")
    if measured.unmeasured:
        flags.append(
            f"attention entropy, layers {measured.unmeasured['unmeasured_layers']}: {measured.unmeasured['why']}"
        )
    return flags


@dataclass
class Band:
    """The rule's choice: SKI's terms per layer (reported whatever the rule), the chosen layers and
    how often the bootstrap chose each layer."""

    terms: dict[str, list[float]]
    chosen: list[int]
    stability: list[float]


def select_band(profile_fns, n_batches: int, n_layers: int, opts: DiagnoseOptions, flags: list[str]) -> Band:
    """SKI terms, the rule's band and its bootstrap stability; a profile the rule cannot score (e.g.
    non-finite) becomes a flag and NaN terms rather than an exception, so the diagnosis still reports.
    ``profile_fns``: ``profile_reader``'s pair."""
    profile_for, profiles_for = profile_fns
    entropy, grad = profile_for(None)
    try:
        terms = ski_terms(entropy, grad, opts.ski_params["alpha"], opts.ski_params["variant"])
        chosen = select_layers(opts.rule, entropy, grad, **opts.params)
        stability = bootstrap_stability(
            profile_for,
            n_batches,
            n_layers,
            opts.rule,
            opts.params,
            resamples=opts.resamples,
            seed=opts.seed,
            profiles_for=profiles_for,
        )
    except DataError as exc:
        flags.append(str(exc))
        nan = [math.nan] * n_layers
        return Band({"ski": nan, "entropy_term": nan, "grad_term": nan}, [], nan)
    return Band(terms, chosen, stability)


def compare_rules(model, layers: list[dict], chosen: list[int], opts: DiagnoseOptions, flags: list[str]) -> dict:
    """Every requested rule at K blocks (``budget`` layers=K, else the band's size), on the probe's
    profiles and the model's weights; with ``params=N``, each rule's rank for N LoRA parameters."""
    from .strategies.budget import Budget

    budget = opts.budget or Budget()
    k = budget.layers or len(chosen)
    if k == 0:
        flags.append("rules not compared: the band is empty, so give the budget explicitly (--budget layers=K)")
        return {}
    profiles = {key: [r[key] for r in layers] for key in PROFILE_KEYS if all(key in r for r in layers)}
    return scored(
        model, opts.rules, weight_inputs(model, profiles=profiles, seed=opts.seed), k, budget, {opts.rule: opts.params}
    )


def weight_inputs(model: nn.Module, **inputs) -> RuleInputs:
    """The rules' inputs with the block matrices as a checkpoint of the model stores them (fused
    experts as their experts), read lazily, so in-memory and scanned scores agree."""
    from .models.stored_matrices import stored_block_matrices
    from .select.spectra import Spectra

    blocks = get_blocks(hf_model(model))
    spectra = Spectra.of_blocks(*stored_block_matrices(model))
    return RuleInputs(len(blocks), blocks=blocks, spectra=spectra, **inputs)


def scored(model, rules, inputs, k, budget, params=None) -> dict:
    """The rules' scores and K-block selections, each with the LoRA size its blocks take (and, for a
    parameter budget, the rank that fits it)."""
    from .strategies.budget import match_budget

    result = score_rules(rules, inputs, k, params)
    result["budget"] = {**budget.to_dict(), "k": k}
    selections = {n: r["selected"] for n, r in result["rules"].items()}
    for name, sizes in match_budget(hf_model(model), selections, budget).items():
        result["rules"][name].update(sizes)
    return result


def _structure_flags(moe) -> list[str]:
    """What this model's structure keeps the probe from measuring, said instead of left out silently
    (what the attention entropy cannot measure is the spec's ``entropy_note``, flagged beside it)."""
    if moe:
        return [
            "dormant FFN units are measured on dense blocks and on shared experts only, not on routed "
            "experts (see the MoE columns instead)"
        ]
    return []


def _flags(layers: list[dict], losses: list[float], output: dict) -> list[str]:
    """Non-finite logits, losses and gradients, counted per batch: said, not averaged away."""
    flags = []
    if output.get("nonfinite_batches"):
        flags.append(
            f"output: {output['nonfinite_batches']} batch(es) with non-finite logits, left out of the output section"
        )
    bad_loss = sum(1 for v in losses if not math.isfinite(v))
    if bad_loss:
        flags.append(f"{bad_loss} probe batch(es) had a non-finite loss")
    for row in layers:
        for key in ("activation_grad_nonfinite_batches", "param_grad_nonfinite_batches"):
            if row.get(key):
                flags.append(
                    f"layer {row['layer']}: {row[key]} batch(es) with non-finite {key.split('_nonfinite')[0].replace('_', ' ')}s"
                )
    return flags
