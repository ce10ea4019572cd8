"""``finetune(config)``: one strategy, one seed, resumable, with training-time diagnostics.

A loop of our own on Hugging Face accelerate rather than ``Trainer``: the run must resume *exactly*
at an epoch boundary (every rank's RNG state included), stop on the step whose loss is non-finite,
and share each logged step's own forward/backward with the gradient probe. ``InflectionCallback``
brings the same diagnostics (the same recorder) to ``Trainer`` runs.

The run is a chain of parts (``parts.py``: data, model, band, remedies, optimizer, CKA snapshot;
``loop.py``: epochs; here: the folder guard, preparation and the final metrics), each reusable.
"""

from __future__ import annotations

import logging
import math
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from safetensors.torch import load_file
from transformers import get_linear_schedule_with_warmup

from ..data import EncodedSplit, encode_split, task_type
from ..devices import make_accelerator, resolve_device
from ..errors import ConfigError
from ..io import atomic_write_json, versions
from ..strategies import STRATEGIES, count_parameters
from ..models.discovery import check_tower
from ..models.loading import text_tower
from ..strategies.lora import check_lora_targets, check_target_names
from ..validate import check_values
from .checkpoint import is_complete, load_checkpoint, load_trainable_state, save_final_model
from .config import FinetuneConfig
from .lm_eval import check_instruction_run, completion_metrics, evaluate_split, per_example
from .loop import Run, TrainState, run_epochs
from .model_cache import ModelCache
from .parts import (
    OPTIMIZERS,
    adapt_model,
    build_optimizer,
    check_labels,
    cka_start,
    load_splits,
    model_factory,
    resolve_band,
)
from .profiles import cka_features, delta_cka_profile
from .run_folder import claim_run_folder, finished_metrics
from .source_head import with_source_head

log = logging.getLogger(__name__)


def check_config(cfg: FinetuneConfig) -> None:
    """Everything that can be refused before any data or model is loaded."""
    STRATEGIES.get(cfg.strategy)
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    check_values(**cfg.to_dict())
    check_target_names(cfg.lora_targets)
    if cfg.diagnosis is not None and not Path(cfg.diagnosis).is_file():
        raise ConfigError(f"--diagnosis {cfg.diagnosis} does not exist")
    if cfg.new_head and not cfg.init:
        raise ConfigError("a new head replaces the head of --init; give the checkpoint to start from")
    check_tower(cfg.tower)
    if cfg.tower != "language":  # refused from the config alone: a tower the model lacks, or one text cannot feed
        text_tower(cfg.init or cfg.model, task_type(cfg.task, cfg.prompt_column, cfg.messages_column), cfg.tower)
    if cfg.lora_targets and cfg.strategy.startswith("lora"):  # a target the model lacks: fail before loading
        task = task_type(cfg.task, cfg.prompt_column, cfg.messages_column)
        check_lora_targets(cfg.init or cfg.model, cfg.lora_targets, task, cfg.lora_dropout)


@dataclass
class Prepared:
    """What ``final_metrics`` needs besides the ``Run``: decided or measured while preparing, before
    the first step, and not carried by the loop (so not in a checkpoint: a resume recomputes it)."""

    band: list[int] | None  # the blocks a band strategy trains (None: the strategy has none)
    band_info: dict[str, Any]  # where the band came from (explicit, a diagnosis file, on the fly)
    layers: list[int]  # the blocks the adapted model trains, as the strategy reports them
    lr: float  # the learning rate used (the strategy's default when none given)
    trainable: int  # trainable parameters (LISA: its active share)
    total: int  # all parameters of the adapted model
    splits: dict[str, Any]  # the raw splits, for the sizes metrics.json reports
    cka_set: EncodedSplit | None  # the ΔCKA examples (None: ΔCKA skipped)
    start_feats: dict[str, Any]  # per block, the ΔCKA features of the model as loaded
    completion_before: dict | None  # a causal LM's validation completion metrics as loaded; None: a classifier

    @property
    def causal(self) -> bool:
        """A causal LM run (scored by completions) rather than a classifier."""
        return self.completion_before is not None


def prepare_run(
    cfg: FinetuneConfig, out: Path, accelerator, *, progress: bool = True, models: ModelCache | None = None
) -> tuple[Run, Prepared]:
    """Data, model, strategy, optimizer and schedule on the accelerator, resumed from the last
    checkpoint when there is one (``models``: copies of checkpoints loaded before). Returns the run
    and what the final metrics need besides it."""
    splits = load_splits(cfg)
    make_model = model_factory(cfg, splits, models)
    band, band_info = resolve_band(cfg, make_model)
    model, tok = make_model(cfg.attn_implementation)
    causal = check_instruction_run(cfg, splits)
    check_labels(model, splits)
    encoded = {k: encode_split(v, tok, cfg.max_length) for k, v in splits.items()}
    model.to(accelerator.device)  # the start snapshot is of the model as loaded, before remedies and adapters
    # A causal LM's validation scores as loaded: the completion loss the run lowers (or not).
    before = completion_metrics(model, encoded["validation"], cfg.eval_batch_size) if causal else None
    cka_set, start_feats = cka_start(
        cfg, model, splits, tok, out, is_main=accelerator.is_main_process, barrier=accelerator.wait_for_everyone
    )
    adapted = adapt_model(cfg, model, band)
    trainable, total = count_parameters(adapted.model)
    world = accelerator.num_processes
    if adapted.schedule is not None:
        if world > 1:
            raise ConfigError(
                f"{cfg.strategy} freezes and unfreezes blocks while training, which DDP does not "
                "allow; run it on one process"
            )
        trainable = adapted.schedule.trainable_params(trainable)
    optimizer = build_optimizer(adapted.model, adapted.lr, cfg.weight_decay, adapted.remedies, cfg.optimizer)
    steps_per_epoch = -(-len(encoded["train"]) // (cfg.batch_size * world * cfg.grad_accum))
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(cfg.warmup_ratio * steps_per_epoch * cfg.epochs), steps_per_epoch * cfg.epochs
    )
    model, optimizer = accelerator.prepare(adapted.model, optimizer)
    run = Run(
        cfg,
        out,
        accelerator,
        model,
        optimizer,
        scheduler,
        adapted.remedies,
        encoded,
        tok,
        TrainState(world_size=world, precision=cfg.precision),
        progress,
        adapted.schedule,
    )
    if is_complete(run.last):
        run.state = TrainState.from_dict(
            load_checkpoint(run.last, run.inner, optimizer, scheduler, rank=accelerator.process_index, world=world)
        )
        log.warning("resuming %s from the end of epoch %d", out, run.state.epoch)
    return run, Prepared(
        band=band,
        band_info=band_info,
        layers=adapted.layers,
        lr=adapted.lr,
        trainable=trainable,
        total=total,
        splits=splits,
        cka_set=cka_set,
        start_feats=start_feats,
        completion_before=before,
    )


def split_scores(run: Run, causal: bool, kept: dict | None = None) -> tuple[dict, dict]:
    """Accuracy per split (validation: the best epoch's) and, for a causal LM, each split's completion
    metrics (validation recomputed to report them all). A classifier's split whose per-example scores
    were ``kept`` takes its accuracy from them instead of a second pass."""
    cfg, state = run.cfg, run.state
    scores, completion = ({}, {}) if causal else ({"validation": state.best_acc}, {})
    for name in (
        ("validation", "test", "test_decontaminated") if causal else ("test", "test_decontaminated", "retention")
    ):
        if not causal and name in (kept or {}):
            scores[name] = sum(kept[name]["correct"]) / len(kept[name]["correct"])
        elif name in run.encoded:
            model = with_source_head(run.inner, cfg.init) if name == "retention" and cfg.new_head else run.inner
            got = evaluate_split(model, run.encoded[name], cfg.eval_batch_size, run.accelerator)
            got.pop("score")
            if "accuracy" in got:
                scores[name] = got["accuracy"]
            if causal:
                completion[name] = got
    return scores, completion


def kept_predictions(run: Run, causal: bool) -> dict:
    """Per-example scores of the evaluation splits (the test splits; validation too for instruction
    data, whose score may be its completion loss), from the best epoch's weights."""
    if run.accelerator.num_processes > 1:
        raise ConfigError("per-example predictions are kept on one process only; run without torchrun")
    names = ("validation", "test") if causal else ("test", "test_decontaminated")
    return {n: per_example(run.inner, run.encoded[n], run.cfg.eval_batch_size) for n in names if n in run.encoded}


def final_metrics(run: Run, prep: Prepared) -> dict:
    """Reload the best epoch's weights, score the test splits, and assemble metrics.json."""
    cfg, state, acc = run.cfg, run.state, run.accelerator
    load_trainable_state(run.inner, load_file(str(run.out / "checkpoints" / "best.safetensors")))
    causal = prep.causal
    kept = kept_predictions(run, causal) if cfg.keep_predictions else None
    scores, completion = split_scores(run, causal=causal, kept=kept)
    end_feats = cka_features(run.inner, prep.cka_set, cfg.cka_pooling) if prep.cka_set else []
    start = [prep.start_feats[str(i)].to(f.device) for i, f in enumerate(end_feats)]
    return {
        "strategy": cfg.strategy,
        "layers": prep.layers,
        "band": prep.band,
        "band_info": prep.band_info,
        "trainable_params": prep.trainable,
        "total_params": prep.total,
        "lr": prep.lr,
        "accuracy": scores,
        "completion": completion,
        "completion_before": prep.completion_before,
        "best_epoch": state.best_epoch,
        "history": state.history,
        "train_seconds": state.train_seconds,
        "steps": state.steps,
        "steps_per_second": state.steps / state.train_seconds if state.train_seconds else math.nan,
        "step_losses": state.step_losses,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "grad_profile": state.grad_profile,
        "remedy_metrics": state.remedy_metrics,
        "delta_cka": delta_cka_profile(start, end_feats),
        "sizes": {k: len(v) for k, v in prep.splits.items()},
        "device": str(acc.device),
        "precision": cfg.precision,
        "world_size": acc.num_processes,
        "grad_accum": cfg.grad_accum,
        "global_batch_size": cfg.batch_size * acc.num_processes * cfg.grad_accum,
        "config": cfg.to_dict(),
        "config_key": cfg.key(),
        "versions": versions(),
        **({"per_example": kept} if kept is not None else {}),
    }


def finetune(
    cfg: FinetuneConfig,
    out: str | Path,
    *,
    progress: bool = True,
    on_epoch_end: Callable[[int], None] | None = None,
    models: ModelCache | None = None,
) -> dict:
    """Train one strategy and write ``out/metrics.json`` (+ checkpoints). Re-running the same
    command resumes from the last completed epoch; a finished run returns its metrics at once.
    ``models`` lets several runs from one checkpoint (the experiment's target runs) load it once.
    Started by ``torchrun`` / ``accelerate launch``, every process trains its share of each global
    batch (DDP), evaluation counts each example once, and the main process writes the files."""
    out = Path(out)
    check_config(cfg)
    choice = resolve_device(cfg.device, cfg.precision)
    if (done := finished_metrics(cfg, out)) is not None:
        return done
    accelerator = make_accelerator(choice, cfg.grad_accum)
    claim_run_folder(cfg, out, write=accelerator.is_main_process)
    accelerator.wait_for_everyone()
    run, prep = prepare_run(cfg, out, accelerator, progress=progress, models=models)
    run_epochs(run, on_epoch_end)
    metrics = final_metrics(run, prep)
    if accelerator.is_main_process:
        if cfg.save_model:
            save_final_model(run.inner, run.tokenizer, out / "model")
        atomic_write_json(out / "metrics.json", metrics)
    accelerator.wait_for_everyone()
    return metrics


__all__ = ["Prepared", "check_config", "final_metrics", "finetune", "prepare_run", "save_final_model"]
