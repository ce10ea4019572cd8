"""The training loop on Hugging Face accelerate: device placement, mixed precision, gradient
accumulation and DDP are accelerate's; what is ours is what the run must keep exactly: the stop at
the very step whose loss is non-finite (on every rank at once), remedy hooks, the training-time
gradient profile, and an atomic checkpoint at each epoch end from which a re-run resumes exactly.
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..errors import TrainingError
from .checkpoint import is_complete, save_checkpoint, save_final_model, trainable_state
from .config import FinetuneConfig
from .lm_eval import evaluate_split
from .grad_profile import GradProfileRecorder
from .loaders import train_loader

# Test hook: the process kills itself (SIGKILL, no clean-up) right after the checkpoint of this epoch,
# as an operator or a preempted node would; the same command then has to resume.
KILL_AFTER_EPOCH = "INFLORA_KILL_AFTER_EPOCH"


@dataclass
class TrainState:
    """Everything the loop carries from epoch to epoch; saved as the checkpoint's meta.json."""

    epoch: int = 0
    history: list = field(default_factory=list)
    best_epoch: int | None = None
    best_acc: float = -1.0
    grad_profile: list = field(default_factory=list)
    train_seconds: float = 0.0
    steps: int = 0
    remedy_metrics: list = field(default_factory=list)
    step_losses: list = field(default_factory=list)
    world_size: int = 1
    precision: str = "fp32"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class Run:
    """A prepared run: the accelerator-wrapped model and optimizer plus what the loop needs."""

    cfg: FinetuneConfig
    out: Path
    accelerator: object
    model: torch.nn.Module  # as prepared (DDP-wrapped under several processes)
    optimizer: object
    scheduler: object
    remedies: list
    encoded: dict
    tokenizer: object
    state: TrainState
    progress: bool = True
    schedule: object | None = None  # lisa: ``before_step(step)`` switches the trained blocks

    @property
    def inner(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    @property
    def last(self) -> Path:
        return self.out / "checkpoints" / "last"


def _any_rank(run: Run, flag: bool) -> bool:
    if run.accelerator.num_processes == 1:
        return flag
    t = torch.tensor([float(flag)], device=run.accelerator.device)
    return bool(run.accelerator.reduce(t, "sum").item() > 0)


def _global_sum(run: Run, value: float) -> float:
    if run.accelerator.num_processes == 1:
        return value
    t = torch.tensor(
        [value],
        dtype=torch.float64 if run.accelerator.device.type != "mps" else torch.float32,
        device=run.accelerator.device,
    )
    return float(run.accelerator.reduce(t, "sum").item())


def _micro_step(run: Run, recorder: GradProfileRecorder, batch: dict, weight: torch.Tensor, epoch: int) -> float:
    """Forward + backward of one micro-batch; returns its share of the step's mean loss."""
    out = run.model(**batch)
    loss = out.loss
    for r in run.remedies:
        loss = r.loss(out.logits, batch["labels"], loss)
    value = float(loss.detach())
    if _any_rank(run, not math.isfinite(value)):
        raise TrainingError(
            f"non-finite loss ({value}) at step {run.state.steps} (epoch {epoch}); the last good checkpoint is "
            f"{run.last if is_complete(run.last) else 'none (first epoch)'}; lower --lr or check the data"
        )
    run.accelerator.backward(loss * weight if float(weight) != 1.0 else loss)
    return value * float(weight) / (run.accelerator.num_processes * run.accelerator.gradient_accumulation_steps)


def _optimizer_step(run: Run, recorder: GradProfileRecorder, batch: dict, step_loss: float) -> float:
    """After the step's last backward: profile row, remedies, clip, step. Returns the global mean loss."""
    cfg, state, step = run.cfg, run.state, run.state.steps
    value = _global_sum(run, step_loss)
    row = recorder.finish_step(step, value)
    if row is not None:
        state.grad_profile.append(row)
    for r in run.remedies:
        r.after_backward(run.inner, step)
    run.accelerator.clip_grad_norm_([p for p in run.model.parameters() if p.requires_grad], cfg.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    for r in run.remedies:
        r.after_step(run.inner, run.optimizer, step, batch)
        if step % cfg.log_every == 0:
            state.remedy_metrics.append({"step": step, **r.metrics()})
    state.steps += 1
    state.step_losses.append(value)
    return value


def train_epoch(run: Run, recorder: GradProfileRecorder, epoch: int) -> float:
    """One pass over the training split; returns the epoch's mean step loss."""
    cfg, acc = run.cfg, run.accelerator
    loader = train_loader(
        run.encoded["train"], cfg.batch_size, acc.num_processes, cfg.grad_accum, cfg.seed * 1000 + epoch, acc
    )
    losses, step_loss, fresh = [], 0.0, True
    bar = tqdm(
        total=len(loader) // cfg.grad_accum,
        desc=f"{cfg.strategy} epoch {epoch}/{cfg.epochs}",
        unit="step",
        disable=not (run.progress and acc.is_main_process),
        leave=False,
    )
    for batch, weight in loader:
        if fresh:
            if run.schedule is not None:
                run.schedule.before_step(run.state.steps)
            recorder.start_step(run.state.steps)
            step_loss, fresh = 0.0, False
        with acc.accumulate(run.model):
            step_loss += _micro_step(run, recorder, batch, weight, epoch)
            if acc.sync_gradients:
                losses.append(_optimizer_step(run, recorder, batch, step_loss))
                fresh = True
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    return sum(losses) / len(losses)


def end_epoch(run: Run, epoch: int, train_loss: float) -> None:
    """Validation, best/last checkpoints (atomically), optional model snapshot."""

    state, cfg, acc = run.state, run.cfg, run.accelerator
    scores = evaluate_split(run.inner, run.encoded["validation"], cfg.eval_batch_size, acc)
    val_acc = scores.pop("score")  # accuracy, or minus the completion loss for free-text completions
    state.history.append(
        {
            "epoch": epoch,
            "train_loss": train_loss,
            "validation_accuracy": scores.get("accuracy"),
            **({"validation": scores} if "completion_loss" in scores else {}),
        }
    )
    ckpt = run.out / "checkpoints"
    if state.best_epoch is None or val_acc > state.best_acc:  # the score can be negative (minus a loss)
        state.best_acc, state.best_epoch = val_acc, epoch
        if acc.is_main_process:
            ckpt.mkdir(exist_ok=True)
            save_file(trainable_state(run.inner), str(ckpt / ".best.tmp"))
            (ckpt / ".best.tmp").replace(ckpt / "best.safetensors")
    state.epoch = epoch
    save_checkpoint(
        run.last,
        run.inner,
        run.optimizer,
        run.scheduler,
        state.to_dict(),
        rank=acc.process_index,
        world=acc.num_processes,
        barrier=acc.wait_for_everyone,
    )
    if epoch in cfg.save_epochs and acc.is_main_process:
        save_final_model(run.inner, run.tokenizer, run.out / f"model-epoch{epoch}")
    acc.wait_for_everyone()
    if run.progress and acc.is_main_process:
        tqdm.write(
            f"epoch {epoch}: train loss {train_loss:.4f}, validation "
            + ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in scores.items() if k != "completion_tokens")
        )
    if os.environ.get(KILL_AFTER_EPOCH) == str(epoch):
        os.kill(os.getpid(), signal.SIGKILL)


def run_epochs(run: Run, on_epoch_end: Callable[[int], None] | None = None) -> None:
    """Train from the epoch after ``run.state.epoch`` to ``cfg.epochs``."""
    recorder = GradProfileRecorder(
        run.inner,
        run.cfg.log_every,
        loss_scale=(run.accelerator.scaler.get_scale if run.accelerator.scaler is not None else None),
    )
    run.model.train()
    try:
        for epoch in range(run.state.epoch + 1, run.cfg.epochs + 1):
            t0 = time.perf_counter()
            train_loss = train_epoch(run, recorder, epoch)
            run.state.train_seconds += time.perf_counter() - t0
            end_epoch(run, epoch, train_loss)
            if on_epoch_end:
                on_epoch_end(epoch)
    finally:
        recorder.close()
