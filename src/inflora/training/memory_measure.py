"""``plan --measure``: a few real steps of one strategy in a fresh process, its peak memory read.

Each strategy runs in its own subprocess (``python -m inflora.training.memory_measure``), so no
allocator state carries over. The model is random-initialised from its config (memory does not
depend on the weights' values), the strategy applied by the same code as in ``plan``, the
optimizer built as ``finetune`` builds it, and one synthetic batch of full-length sequences made.
After a warm-up forward without gradients (one-time kernel set-up), the baseline is taken:

- CPU: free heap returned to the system (``malloc_trim``), the kernel's peak-RSS counter reset
  (``/proc/self/clear_refs`` = 5); the figure is ``VmHWM`` after the steps minus ``VmRSS`` before.
  glibc's mmap threshold is fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``) so that a freed tensor
  goes back to the system: left dynamic, glibc raises it up to 32 MiB after the first large frees
  and keeps freed 1-32 MiB tensors in its heap, where the process holds them (all-MiniLM-L6-v2,
  full, batch 32 x 128: 1,819 MiB with the default against 1,297 MiB fixed, 1,320 planned).
  ``plain_malloc=True`` measures with glibc's default.
- CUDA: ``torch.cuda.max_memory_allocated()`` minus the memory allocated before the steps.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from ..devices import return_freed_memory
from ..errors import ConfigError, TrainingError
from ..strategies.budget import Budget
from ..validate import check_values

MARK = "MEASURED "
MMAP_THRESHOLD = 128 * 1024


def status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def measure(
    spec, strategy: str, steps: int = 3, device: str = "cpu", threads: int = 0, plain_malloc: bool = False
) -> dict:
    """Run ``steps`` steps of ``strategy`` in a fresh process; its peak memory above the loaded model.
    Unless ``plain_malloc``, glibc's mmap threshold is fixed (see the module docstring)."""
    payload = {
        "spec": {**asdict(spec), "budget": spec.budget.to_dict() if spec.budget else None},
        "strategy": strategy,
        "steps": steps,
        "device": device,
        "threads": threads,
    }
    env = dict(os.environ) if plain_malloc else {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    proc = subprocess.run(
        [sys.executable, "-m", __name__],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise TrainingError(f"measuring {strategy} failed: {tail}")
    return json.loads(line[len(MARK) :])


def _spec_from(payload: dict):
    from .memory_plan import PlanSpec

    raw = dict(payload["spec"])
    budget = raw.pop("budget")
    raw["strategies"] = tuple(raw["strategies"])
    raw["budget"] = Budget(layers=budget["layers"], params=budget["params"]) if budget else None
    return PlanSpec(**raw)


def real_model(spec):
    """The classifier of ``spec.model`` with random weights, ``spec.attention`` attention."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from ..models import model_config

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(model_config(spec.model), attn_implementation=spec.attention)


def synthetic_batch(spec, vocab: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, min(vocab, 30000), (spec.batch_size, spec.length), generator=g)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.randint(0, 2, (spec.batch_size,), generator=g),
    }


def training_steps(spec, strategy: str, model, batch: dict, steps: int, device_type: str):
    """The workload: ``steps`` optimizer steps as the training loop makes them (clip, AdamW, zero)."""
    import torch

    from ..devices import autocast
    from .memory_plan import applied_model
    from .parts import build_optimizer

    model, _, _, schedule = applied_model(spec, strategy, model)
    model.train()
    optimizer = build_optimizer(model, 1e-5, 0.01)

    def run():
        for step in range(steps):
            if schedule is not None:
                schedule.before_step(step)
            with autocast(device_type, spec.precision):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return model, run


def diagnose_steps(spec, model, batch: dict, steps: int):
    from ..diagnosis import diagnose

    def run():
        diagnose(model, [batch] * steps, batches=steps, progress=False, precision=spec.precision, resamples=20)

    return model, run


def _baseline(device_type: str) -> int:
    """Memory held now, after freeing what can be freed, and the peak counter reset (bytes)."""
    import torch

    gc.collect()
    if device_type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return_freed_memory()
    before = status_kb("VmRSS") * 1024
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    return before


def _peak(device_type: str) -> int:
    import torch

    if device_type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return status_kb("VmHWM") * 1024


def child(payload: dict) -> dict:
    import torch

    from ..strategies import count_parameters

    spec, strategy, steps = _spec_from(payload), payload["strategy"], payload["steps"]
    if payload.get("threads"):
        torch.set_num_threads(payload["threads"])
    device = torch.device(payload["device"])
    model = real_model(spec).to(device)
    batch = {k: v.to(device) for k, v in synthetic_batch(spec, model.config.vocab_size).items()}
    with torch.no_grad():  # warm-up: one-time kernel and thread-pool set-up is not the step's memory
        model.eval()(**batch)
    if strategy == "diagnose":
        model, run = diagnose_steps(spec, model, batch, steps)
    else:
        model, run = training_steps(spec, strategy, model, batch, steps, device.type)
    trainable, total = count_parameters(model)
    before = _baseline(device.type)
    run()
    peak = _peak(device.type)
    return {
        "strategy": strategy,
        "peak_above_model": peak - before,
        "trainable": trainable,
        "total": total,
        "steps": steps,
        "device": str(device),
        "method": "max_memory_allocated"
        if device.type == "cuda"
        else f"VmHWM - VmRSS (clear_refs, malloc_trim; MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'glibc default')})",
    }


if __name__ == "__main__":
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    print(MARK + json.dumps(child(json.loads(sys.stdin.read()))), flush=True)


def check_measure_options(device: str, steps: int, threads: int) -> None:
    """``--device``, ``--measure-steps`` and ``--threads`` are checked whether or not ``--measure``
    is given, so a typo is reported before a long plan, not ignored."""
    check_values(measure_steps=steps, threads=threads)
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"unknown --device {device!r}; choose one of cpu, cuda, cuda:N")


def measured_rows(
    spec, plans: list, steps: int = 3, device: str = "cpu", threads: int = 0, plain_malloc: bool = False, on_row=None
) -> list[dict]:
    """Each plan beside its measurement: the measured peak above the model and the relative error
    of the prediction, (predicted − measured) / measured; ``on_row(row)`` as each one is done."""
    check_measure_options(device, steps, threads)
    rows = []
    for p in plans:
        m = measure(spec, p.strategy, steps, device, threads, plain_malloc)
        if m["trainable"] != p.trainable:
            raise TrainingError(
                f"{p.strategy}: planned {p.trainable:,} trainable parameters, the run has {m['trainable']:,}"
            )
        got = m["peak_above_model"]
        rows.append(
            {
                **p.to_dict(),
                "measured_above_model": got,
                "device": m["device"],
                "method": m["method"],
                "error": (p.peak_above_model - got) / got if got > 0 else None,
            }
        )
        if on_row is not None:
            on_row(rows[-1])
    return rows
