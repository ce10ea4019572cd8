"""``InflectionCallback``: inflora's training-time diagnostics for any Hugging Face ``Trainer`` run.

Every ``every`` optimizer steps the callback switches a ``LayerProbe`` on for that step's own
forward/backward (no extra passes) and records, per block, the activation-gradient norm
‖∂L/∂h⁽ˡ⁾‖ (per token, padding excluded) and the parameter-gradient norm ‖∇θ L‖, plus the
embeddings and head groups. Rows go to a JSON file (atomically) and, when ``"tensorboard"`` is in
``args.report_to``, to TensorBoard. With ``cka_batches=`` it also reports ΔCKA per block between
the model at ``on_train_begin`` and the model at ``on_train_end`` on that fixed probe set.

The per-step recording is ``GradProfileRecorder`` (the same code as ``inflora finetune``'s
``grad_profile``): pre-clip gradients, every micro-batch of a logged step under gradient
accumulation, and under DDP every rank records the numbers of one process with the same global
batch (one rank writes the files).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..errors import ConfigError
from ..io import atomic_write_json, versions
from ..models import hf_model
from ..probe import LayerProbe
from .grad_profile import GradProfileRecorder
from .profiles import delta_cka_profile

log = logging.getLogger(__name__)

JSON_NAME = "inflora_grad_profile.json"


@torch.no_grad()
def batch_features(model, batches: list[dict], pooling: str = "mean") -> list[torch.Tensor]:
    """[n, d] pooled block outputs per layer over ``batches`` (tokenised dicts), in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with LayerProbe(model, ["features"], features={"pooling": pooling}) as probe:
            for batch in batches:
                model(**{k: v.to(device) for k, v in batch.items() if k != "labels" and torch.is_tensor(v)})
            return probe.plugins[0].matrices()
    finally:
        model.train(was_training)


def _reports_tensorboard(report_to) -> bool:
    if report_to is None:
        return False
    if isinstance(report_to, str):
        report_to = [report_to]
    if "all" in report_to:
        from transformers.integrations import is_tensorboard_available

        return is_tensorboard_available()
    return "tensorboard" in report_to


class InflectionCallback(TrainerCallback):
    """Per-layer activation- and parameter-gradient norms every ``every`` steps, and ΔCKA at the end.

    ``json_path``: where the profile is written (default ``args.output_dir/inflora_grad_profile.json``).
    ``cka_batches``: tokenised batch dicts (labels are ignored) for ΔCKA start → end; None skips it.
    ``tensorboard_dir``: where the event file goes (default: ``args.logging_dir`` where the
    transformers version has it, else ``$TENSORBOARD_LOGGING_DIR``, else ``args.output_dir/runs/inflora``).
    After training, ``rows`` and ``delta_cka`` hold the results.
    """

    def __init__(
        self,
        every: int = 10,
        json_path: str | os.PathLike | None = None,
        *,
        cka_batches: list[dict] | None = None,
        cka_pooling: str = "mean",
        tensorboard_dir: str | os.PathLike | None = None,
    ):
        if int(every) < 1:
            raise ConfigError(f"InflectionCallback(every=...) must be at least 1, got {every}")
        if cka_batches is not None and not cka_batches:
            raise ConfigError("cka_batches is empty; pass at least one tokenised batch or None")
        self.every = int(every)
        self.json_path = Path(json_path) if json_path is not None else None
        self.cka_batches = cka_batches
        self.cka_pooling = cka_pooling
        self.tensorboard_dir = tensorboard_dir
        self.rows: list[dict] = []
        self.delta_cka: list[float] | None = None
        self.recorder: GradProfileRecorder | None = None
        self.writer = None
        self._losses: list[float] = []
        self._loss_handle = None
        self._start_features: list[torch.Tensor] | None = None
        self._model_name = None

    # ---------------------------------------------------------------- lifecycle
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ConfigError("InflectionCallback needs the model; Trainer passes it to its callbacks")
        self._close()
        self.rows, self.delta_cka = [], None
        self._model_name = getattr(getattr(hf_model(model), "config", None), "name_or_path", None)
        if self.cka_batches is not None:
            self._start_features = batch_features(model, self.cka_batches, self.cka_pooling)
        self.recorder = GradProfileRecorder(model, self.every)
        self._loss_handle = model.register_forward_hook(self._record_loss)
        if state.is_world_process_zero and _reports_tensorboard(args.report_to):
            from torch.utils.tensorboard import SummaryWriter

            logdir = (
                self.tensorboard_dir
                or getattr(args, "logging_dir", None)
                or os.getenv("TENSORBOARD_LOGGING_DIR")
                or os.path.join(args.output_dir, "runs", "inflora")
            )
            self.writer = SummaryWriter(log_dir=str(logdir))

    def on_step_begin(self, args, state, control, **kwargs):
        if self.recorder is not None:
            self._losses = []
            self.recorder.start_step(state.global_step)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.recorder is None or not self.recorder.active:
            return
        row = self.recorder.finish_step(state.global_step, self._step_loss())
        row.update({"global_step": state.global_step + 1, "epoch": state.epoch})
        self.rows.append(row)
        if self.writer is not None:
            self._write_tensorboard(row, row["global_step"])

    def on_step_end(self, args, state, control, **kwargs):
        if self.recorder is not None and self.recorder.active:  # no optimizer step came: drop, never leak hooks
            log.warning("InflectionCallback: step %d ended without an optimizer step; not recorded", state.global_step)
            self.recorder.cancel()

    def on_log(self, args, state, control, **kwargs):
        self._save(args, state)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._save(args, state)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._close()
        if self._start_features is not None and model is not None:
            end = batch_features(model, self.cka_batches, self.cka_pooling)
            self.delta_cka = delta_cka_profile(self._start_features, end)
            if self.writer is not None:
                for i, v in enumerate(self.delta_cka):
                    self.writer.add_scalar(f"inflora/delta_cka/layer_{i:02d}", v, state.global_step)
        self._save(args, state)
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # ---------------------------------------------------------------- internals
    def _record_loss(self, module, args, output) -> None:
        loss = getattr(output, "loss", None)
        if loss is None and isinstance(output, dict):
            loss = output.get("loss")
        if self.recorder is not None and self.recorder.active and torch.is_grad_enabled() and torch.is_tensor(loss):
            self._losses.append(float(loss.detach()))

    def _step_loss(self) -> float | None:
        """Mean loss over the step's micro-batches, and over ranks under DDP."""
        import torch.distributed as dist

        mean = sum(self._losses) / len(self._losses) if self._losses else math.nan
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            t = torch.tensor([mean], dtype=torch.float64, device=self.recorder.device)
            dist.all_reduce(t)
            mean = float(t) / dist.get_world_size()
        return mean if math.isfinite(mean) else None

    def _write_tensorboard(self, row: dict, step: int) -> None:
        for kind in ("activation_grad_norm", "param_grad_norm", "attention_entropy"):
            for i, v in enumerate(row.get(kind, ())):
                self.writer.add_scalar(f"inflora/{kind}/layer_{i:02d}", v, step)
        self.writer.add_scalar("inflora/param_grad_norm/embeddings", row["param_grad_norm_embeddings"], step)
        self.writer.add_scalar("inflora/param_grad_norm/head", row["param_grad_norm_head"], step)

    def _close(self) -> None:
        if self._loss_handle is not None:
            self._loss_handle.remove()
            self._loss_handle = None
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None

    def _save(self, args, state) -> None:
        if not state.is_world_process_zero:
            return
        path = self.json_path or Path(args.output_dir) / JSON_NAME
        atomic_write_json(
            path,
            {
                "every": self.every,
                "model": self._model_name,
                "global_step": state.global_step,
                "grad_profile": self.rows,
                "delta_cka": self.delta_cka,
                "pre_clip": True,
                "versions": versions(),
            },
        )


__all__ = ["InflectionCallback", "batch_features"]
