"""``finetune(config)``: one strategy, one seed, resumable, with training-time diagnostics.

A plain PyTorch loop rather than HF ``Trainer``: the run must resume *exactly* at an epoch boundary
(RNG states included), stop on the step whose loss is non-finite, and share each logged step's own
forward/backward with the gradient probe. ``InflectionCallback`` brings the same diagnostics to
``Trainer`` runs.
"""
from __future__ import annotations

import copy
import logging
import math
import resource
import shutil
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from ..data import EncodedSplit, decontaminate, load_task
from ..errors import ConfigError, DataError, TrainingError
from ..io import atomic_write_json, read_json, versions
from ..models import load_model
from ..strategies import NEEDS_BAND, STRATEGIES, StrategyOptions, apply_strategy, count_parameters
from .checkpoint import is_complete, load_checkpoint, save_checkpoint, trainable_state
from .config import FinetuneConfig
from .evaluate import accuracy
from .grad_logger import GradLogger
from .profiles import cka_features, delta_cka_profile

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_splits(cfg: FinetuneConfig) -> dict:
    train = load_task(cfg.task, "train", cfg.data_dir).stratified(cfg.limit_train, cfg.seed).require_classes()
    val = load_task(cfg.task, "validation", cfg.data_dir).stratified(cfg.limit_eval, cfg.seed).require_nonempty()
    splits = {"train": train, "validation": val}
    try:
        test = load_task(cfg.task, "test", cfg.data_dir)
    except DataError:
        return splits  # e.g. SST-2 has no labelled test split
    splits["test"] = test.stratified(cfg.limit_eval, cfg.seed)
    if cfg.decontaminate_against and cfg.decontaminate_against != cfg.task:
        source = load_task(cfg.decontaminate_against, "train", cfg.data_dir)
        clean = decontaminate(splits["test"], source)
        if len(clean):
            splits["test_decontaminated"] = clean
        else:  # a small --limit-eval subset can lie wholly inside the source; not a reason to fail the run
            log.warning("every %s test example also occurs in %s/train; no decontaminated test accuracy",
                        cfg.task, cfg.decontaminate_against)
    return splits


def resolve_band(cfg: FinetuneConfig, model_factory) -> tuple[list[int] | None, dict]:
    """The inflection band from --layers, --diagnosis, or a diagnosis run on the fly."""
    if cfg.strategy not in NEEDS_BAND:
        return None, {}
    if cfg.layers:
        return sorted(cfg.layers), {"source": "layers"}
    if cfg.diagnosis:
        from ..diagnosis import Diagnosis

        d = Diagnosis.from_json(cfg.diagnosis)
        if not d.inflection_layers:
            raise ConfigError(f"{cfg.diagnosis} selected no layers; pass --layers")
        return d.inflection_layers, {"source": str(cfg.diagnosis)}
    from ..diagnosis import diagnose

    model, tok = model_factory("eager")
    val = load_task(cfg.task, "validation", cfg.data_dir)
    d = diagnose(model, val, tok, batches=cfg.diagnose_batches, max_length=cfg.max_length, seed=cfg.seed, progress=False)
    if not d.inflection_layers:
        raise TrainingError("on-the-fly diagnosis selected no layers: " + "; ".join(d.flags))
    return d.inflection_layers, {"source": "on-the-fly", "ski": d.ski, "stability": d.stability}


def build_remedies(cfg: FinetuneConfig) -> list:
    if not cfg.remedies:
        return []
    from ..remedies import REMEDIES

    return [REMEDIES.get(name).from_options(**cfg.remedy_options.get(name, {})) for name in cfg.remedies]


OPTIMIZERS = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def _optimizer(model, lr: float, weight_decay: float, remedies: list = (), kind: str = "adamw"):
    """AdamW (or plain SGD) without decay on biases and norms, unless a remedy brings its own
    optimizer (SPAM). ``finetune`` has checked ``kind`` before loading the model."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "norm" in name.lower() else decay).append(p)
    if not decay and not no_decay:
        raise ConfigError("the strategy left no trainable parameters")
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    maker = next((r.make_optimizer for r in remedies if hasattr(r, "make_optimizer")), None)
    if maker and kind != "adamw":
        raise ConfigError(f"a remedy brings its own optimizer; it cannot be combined with --optimizer {kind}")
    return maker(groups, lr=lr) if maker else OPTIMIZERS[kind](groups, lr=lr)


def _check_labels(model, splits: dict) -> None:
    n = model.config.num_labels
    for name, ds in splits.items():
        if ds.labels and (max(ds.labels) >= n or min(ds.labels) < 0):
            raise DataError(f"the model has {n} labels but {name} holds label ids {sorted(set(ds.labels))}")
    if splits["train"].num_labels != n:
        raise DataError(f"the model has {n} labels but task {splits['train'].name!r} has {splits['train'].num_labels}")


def _check_checkpoint_labels(source: str, n: int, task: str) -> None:
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


def finetune(cfg: FinetuneConfig, out: str | Path, *, progress: bool = True,
             on_epoch_end: Callable[[int], None] | None = None) -> dict:
    """Train one strategy and write ``out/metrics.json`` (+ checkpoints). Re-running the same
    command resumes from the last completed epoch; a finished run returns its metrics at once."""
    out = Path(out)
    STRATEGIES.get(cfg.strategy)
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    if cfg.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {cfg.epochs}")
    metrics_path = out / "metrics.json"
    if metrics_path.exists():
        done = read_json(metrics_path)
        if done.get("config_key") == cfg.key():
            return done
        raise ConfigError(f"{out} holds a finished run with a different configuration; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    key_file = out / "config.json"
    if key_file.exists() and read_json(key_file).get("config_key") != cfg.key():
        raise ConfigError(f"{out} holds an unfinished run with a different configuration; choose another --out")
    atomic_write_json(key_file, {"config_key": cfg.key(), "config": cfg.to_dict()})

    splits = load_splits(cfg)
    source = cfg.init or cfg.model

    def model_factory(attn: str):
        seed_everything(cfg.seed)  # the classifier's random init is part of the run's identity
        labels = None if cfg.init else splits["train"].num_labels  # a checkpoint keeps its own head
        if labels is not None:
            _check_checkpoint_labels(source, labels, cfg.task)
        return load_model(source, num_labels=labels, attn_implementation=attn)

    band, band_info = resolve_band(cfg, model_factory)
    model, tok = model_factory(cfg.attn_implementation)
    _check_labels(model, splits)
    encoded = {k: EncodedSplit(v, tok, cfg.max_length) for k, v in splits.items()}
    cka_set, start_feats = None, {}
    if cfg.cka_examples:
        cka_set = EncodedSplit(splits["validation"].stratified(cfg.cka_examples, cfg.seed), tok, cfg.max_length)
        start_path = out / "cka_start.safetensors"
        if not start_path.exists():
            tmp = start_path.with_name(f".{start_path.name}.tmp")
            save_file({str(i): f for i, f in enumerate(cka_features(model, cka_set, cfg.cka_pooling))}, str(tmp))
            tmp.replace(start_path)
        start_feats = load_file(str(start_path))

    remedies = build_remedies(cfg)
    for r in remedies:
        model = r.wrap_model(model)
    applied = apply_strategy(cfg.strategy, model, StrategyOptions(
        layers=band, k=cfg.k, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
        targets=cfg.lora_targets, seed=cfg.seed))
    model = applied.model
    lr = cfg.lr if cfg.lr is not None else applied.lr
    trainable, total = count_parameters(model)
    steps_per_epoch = encoded["train"].num_batches(cfg.batch_size)
    optimizer = _optimizer(model, lr, cfg.weight_decay, remedies, cfg.optimizer)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * steps_per_epoch * cfg.epochs),
                                                steps_per_epoch * cfg.epochs)
    state = {"epoch": 0, "history": [], "best_epoch": None, "best_acc": -1.0, "grad_profile": [],
             "train_seconds": 0.0, "steps": 0, "remedy_metrics": []}
    last = out / "checkpoints" / "last"
    if is_complete(last):
        state = load_checkpoint(last, model, optimizer, scheduler)
        log.warning("resuming %s from the end of epoch %d", out, state["epoch"])

    grad_log = GradLogger(model, cfg.log_every)
    model.train()
    try:
        for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            losses = []
            bar = tqdm(encoded["train"].batches(cfg.batch_size, seed=cfg.seed * 1000 + epoch), total=steps_per_epoch,
                       desc=f"{cfg.strategy} epoch {epoch}/{cfg.epochs}", unit="step", disable=not progress, leave=False)
            for batch in bar:
                step = state["steps"]
                grad_log.before_step(step)
                out_ = model(**batch)
                loss = out_.loss
                for r in remedies:
                    loss = r.loss(out_.logits, batch["labels"], loss)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise TrainingError(
                        f"non-finite loss ({value}) at step {step} (epoch {epoch}); the last good checkpoint is "
                        f"{last if is_complete(last) else 'none (first epoch)'}; lower --lr or check the data")
                loss.backward()
                grad_log.after_backward(step, value)
                for r in remedies:
                    r.after_backward(model, step)
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                for r in remedies:
                    r.after_step(model, optimizer, step, batch)
                    if step % cfg.log_every == 0:
                        state["remedy_metrics"].append({"step": step, **r.metrics()})
                state["steps"] += 1
                losses.append(value)
                bar.set_postfix(loss=f"{value:.4f}")
            state["grad_profile"] = state["grad_profile"] + grad_log.rows
            grad_log.rows = []
            state["train_seconds"] += time.perf_counter() - t0
            val_acc = accuracy(model, encoded["validation"], cfg.eval_batch_size)
            state["history"].append({"epoch": epoch, "train_loss": sum(losses) / len(losses), "validation_accuracy": val_acc})
            if val_acc > state["best_acc"]:
                state["best_acc"], state["best_epoch"] = val_acc, epoch
                (out / "checkpoints").mkdir(exist_ok=True)
                tmp = out / "checkpoints" / ".best.tmp"
                save_file(trainable_state(model), str(tmp))
                tmp.replace(out / "checkpoints" / "best.safetensors")
            state["epoch"] = epoch
            save_checkpoint(last, model, optimizer, scheduler, state)
            if epoch in cfg.save_epochs:
                save_final_model(model, tok, out / f"model-epoch{epoch}")
            if progress:
                tqdm.write(f"epoch {epoch}: train loss {state['history'][-1]['train_loss']:.4f}, validation accuracy {val_acc:.4f}")
            if on_epoch_end:
                on_epoch_end(epoch)
    finally:
        grad_log.close()

    from .checkpoint import load_trainable_state

    load_trainable_state(model, load_file(str(out / "checkpoints" / "best.safetensors")))
    acc = {"validation": state["best_acc"]}
    for name in ("test", "test_decontaminated"):
        if name in encoded:
            acc[name] = accuracy(model, encoded[name], cfg.eval_batch_size)
    end_feats = cka_features(model, cka_set, cfg.cka_pooling) if cka_set else []
    metrics = {
        "strategy": cfg.strategy, "layers": applied.layers, "band": band, "band_info": band_info,
        "trainable_params": trainable, "total_params": total, "lr": lr,
        "accuracy": acc, "best_epoch": state["best_epoch"], "history": state["history"],
        "train_seconds": state["train_seconds"], "steps": state["steps"],
        "steps_per_second": state["steps"] / state["train_seconds"] if state["train_seconds"] else math.nan,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "grad_profile": state["grad_profile"], "remedy_metrics": state["remedy_metrics"],
        "delta_cka": delta_cka_profile([start_feats[str(i)] for i in range(len(end_feats))], end_feats),
        "sizes": {k: len(v) for k, v in splits.items()},
        "config": cfg.to_dict(), "config_key": cfg.key(), "versions": versions(),
    }
    if cfg.save_model:
        save_final_model(model, tok, out / "model")
    atomic_write_json(metrics_path, metrics)
    return metrics


def save_final_model(model, tokenizer, path: Path) -> Path:
    """A plain transformers folder (LoRA merged) that ``--init`` and ``load_model`` accept."""
    if hasattr(model, "merge_and_unload"):  # merge a copy: training may go on with the adapters
        model = copy.deepcopy(model).merge_and_unload()
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path
