"""The parts of a fine-tuning run, each doing one job: data, model, band, remedies, optimizer, CKA
start snapshot. ``finetune`` chains them; the experiment harness and benchmarks reuse them."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..data import CAUSAL_LM, EncodedSplit, decontaminate, encode_split, is_user_file, load_any, load_task, task_type
from ..errors import ConfigError, DataError, TrainingError
from ..models import load_model
from ..strategies import NEEDS_BAND, StrategyOptions, apply_strategy
from ..strategies.rule_arms import blocks_from_diagnosis, rule_of
from .config import FinetuneConfig
from .model_cache import ModelCache
from .profiles import cka_features

log = logging.getLogger(__name__)

OPTIMIZERS = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_split(cfg: FinetuneConfig, split: str):
    """One split of ``cfg.task``: a built-in task or a user file (see ``inflora.data.load_any``)."""
    return load_any(
        cfg.task,
        split,
        cfg.data_dir,
        text_column=cfg.text_column,
        label_column=cfg.label_column,
        prompt_column=cfg.prompt_column,
        completion_column=cfg.completion_column,
        messages_column=cfg.messages_column,
    )


def load_splits(cfg: FinetuneConfig) -> dict:
    """train / validation / test (+ test_decontaminated) as ``TextDataset``s, stratified subsets."""
    train = load_split(cfg, "train").stratified(cfg.limit_train, cfg.seed).require_classes()
    val = load_split(cfg, "validation").stratified(cfg.limit_eval, cfg.seed).require_nonempty()
    splits = {"train": train, "validation": val}
    if cfg.retention_task:  # forgetting: the source task's validation accuracy after target training
        splits["retention"] = load_task(cfg.retention_task, "validation", cfg.data_dir).stratified(
            cfg.limit_eval, cfg.seed
        )
    try:
        test = load_split(cfg, "test")
    except DataError:
        return splits  # e.g. SST-2 has no labelled test split
    splits["test"] = test.stratified(cfg.limit_eval, cfg.seed)
    if cfg.decontaminate_against and cfg.decontaminate_against != cfg.task and not is_user_file(cfg.task):
        source = load_task(cfg.decontaminate_against, "train", cfg.data_dir)
        clean = decontaminate(splits["test"], source)
        if len(clean):
            splits["test_decontaminated"] = clean
        else:  # a small --limit-eval subset can lie wholly inside the source; not a reason to fail the run
            log.warning(
                "every %s test example also occurs in %s/train; no decontaminated test accuracy",
                cfg.task,
                cfg.decontaminate_against,
            )
    return splits


def model_factory(cfg: FinetuneConfig, splits: dict, models: ModelCache | None = None):
    """``make(attn)`` -> (model, tokenizer), seeded: the classifier's random init is part of the run's
    identity. With ``models``, a checkpoint already loaded the same way (same source, seed, head and
    attention) is copied instead of read again."""
    source = cfg.init or cfg.model

    def load(attn: str):
        seed_everything(cfg.seed)
        if is_instruction_data(splits):  # a causal LM trained on the completions
            return load_model(source, task=CAUSAL_LM, attn_implementation=attn, tower=cfg.tower)
        if cfg.new_head:
            return load_under_new_head(source, splits["train"].num_labels, attn, cfg.tower)
        labels = None if cfg.init else splits["train"].num_labels  # a checkpoint keeps its own head
        if labels is not None:
            check_checkpoint_labels(source, labels, cfg.task)
        return load_model(source, num_labels=labels, attn_implementation=attn, tower=cfg.tower)

    def make(attn: str):
        if models is None:
            return load(attn)
        key = (
            str(source),
            cfg.seed,
            is_instruction_data(splits),
            cfg.new_head,
            bool(cfg.init),
            getattr(splits["train"], "num_labels", None),
            attn,
            cfg.tower,
        )
        return models.get(key, lambda: load(attn))

    return make


def load_under_new_head(source: str, num_labels: int, attn: str = "eager", tower: str = "language"):
    """A saved classifier's backbone under a fresh head for ``num_labels`` classes (SST-2 -> TREC): the
    head weights whose shapes differ are drawn anew from the current torch seed."""
    return load_model(
        source, num_labels=num_labels, attn_implementation=attn, ignore_mismatched_sizes=True, tower=tower
    )


def resolve_band(cfg: FinetuneConfig, make_model) -> tuple[list[int] | None, dict]:
    """The inflection band (or a ``lora-<rule>`` strategy's blocks) from --layers, --diagnosis, or a
    diagnosis run on the fly."""
    if cfg.strategy not in NEEDS_BAND:
        return None, {}
    if cfg.layers:
        return sorted(cfg.layers), {"source": "layers"}
    if cfg.diagnosis:
        from ..diagnosis import Diagnosis

        d = Diagnosis.from_json(cfg.diagnosis)
        if not blocks_from_diagnosis(cfg.strategy, d):
            raise ConfigError(f"{cfg.diagnosis} selected no layers; pass --layers")
        return blocks_from_diagnosis(cfg.strategy, d), {"source": str(cfg.diagnosis)}
    from ..diagnosis import diagnose

    model, tok = make_model("eager")
    val = load_split(cfg, "validation")
    d = diagnose(
        model,
        val,
        tok,
        batches=cfg.diagnose_batches,
        max_length=cfg.max_length,
        seed=cfg.seed,
        progress=False,
        device=cfg.device,
        precision=cfg.precision,
        rules=[rule_of(cfg.strategy)] if rule_of(cfg.strategy) else None,
    )
    if not d.inflection_layers:
        raise TrainingError("on-the-fly diagnosis selected no layers: " + "; ".join(d.flags))
    return blocks_from_diagnosis(cfg.strategy, d), {"source": "on-the-fly", "ski": d.ski, "stability": d.stability}


def build_remedies(cfg: FinetuneConfig) -> list:
    if not cfg.remedies:
        return []
    from ..remedies import REMEDIES

    return [REMEDIES.get(name).from_options(**cfg.remedy_options.get(name, {})) for name in cfg.remedies]


@dataclass
class Adapted:
    """The model as trained: remedies wrapped, strategy applied."""

    model: torch.nn.Module
    layers: list[int]
    lr: float
    remedies: list
    schedule: object | None = None  # lisa: blocks switched before each optimizer step


def adapt_model(cfg: FinetuneConfig, model, band: list[int] | None) -> Adapted:
    remedies = build_remedies(cfg)
    for r in remedies:
        model = r.wrap_model(model)
    applied = apply_strategy(
        cfg.strategy,
        model,
        StrategyOptions(
            layers=band,
            k=cfg.k,
            r=cfg.lora_r,
            alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
            targets=cfg.lora_targets,
            seed=cfg.seed,
            extra={"lisa_interval": cfg.lisa_interval},
        ),
    )
    return Adapted(
        applied.model, applied.layers, cfg.lr if cfg.lr is not None else applied.lr, remedies, applied.schedule
    )


def build_optimizer(model, lr: float, weight_decay: float, remedies: list = (), kind: str = "adamw"):
    """AdamW (or plain SGD) without decay on biases and norms, unless a remedy brings its own
    optimizer (SPAM). ``finetune`` has checked ``kind`` before loading the model."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)  # by shape, as nanoGPT: biases and norm gains
    if not decay and not no_decay:
        raise ConfigError("the strategy left no trainable parameters")
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    own = next((opt for r in remedies if (opt := r.make_optimizer(groups, lr=lr)) is not None), None)
    if own is not None and kind != "adamw":
        raise ConfigError(f"a remedy brings its own optimizer; it cannot be combined with --optimizer {kind}")
    return own if own is not None else OPTIMIZERS[kind](groups, lr=lr)


def is_instruction_data(splits: dict) -> bool:
    return task_type(splits["train"]) == CAUSAL_LM


def check_labels(model, splits: dict) -> None:
    if is_instruction_data(splits):  # completions, not class ids: nothing to match against a classifier
        return
    n = model.config.num_labels
    for name, ds in splits.items():
        if ds.labels and (max(ds.labels) >= n or min(ds.labels) < 0):
            raise DataError(f"the model has {n} labels but {name} holds label ids {sorted(set(ds.labels))}")
    if splits["train"].num_labels != n:
        raise DataError(f"the model has {n} labels but task {splits['train'].name!r} has {splits['train'].num_labels}")


def check_checkpoint_labels(source: str, n: int, task: str) -> None:
    """A saved classifier whose label count differs from the task's would fail inside transformers
    with a size-mismatch report; say it in one line instead."""
    from transformers import AutoConfig

    from ..models import resolve_model_path

    try:
        conf = AutoConfig.from_pretrained(resolve_model_path(source))
    except (OSError, ValueError):
        return  # load_model reports an unreadable model
    if any(a.endswith("ForSequenceClassification") for a in conf.architectures or []) and conf.num_labels != n:
        raise DataError(f"the model {source} is a classifier with {conf.num_labels} labels but task {task!r} has {n}")


def cka_start(
    cfg: FinetuneConfig, model, splits: dict, tok, out: Path, *, is_main: bool = True, barrier=lambda: None
) -> tuple[EncodedSplit | None, dict]:
    """The ΔCKA probe set and the start model's features, saved once (a resumed run reads them back)."""
    if not cfg.cka_examples:
        return None, {}
    cka_set = encode_split(splits["validation"].stratified(cfg.cka_examples, cfg.seed), tok, cfg.max_length)
    start_path = Path(out) / "cka_start.safetensors"
    if not start_path.exists() and is_main:
        tmp = start_path.with_name(f".{start_path.name}.tmp")
        save_file({str(i): f.cpu() for i, f in enumerate(cka_features(model, cka_set, cfg.cka_pooling))}, str(tmp))
        tmp.replace(start_path)
    barrier()
    return cka_set, load_file(str(start_path))
