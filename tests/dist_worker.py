"""One process of the distributed diagnose test (see test_distributed.py).

Launched with the torchrun-style environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); joins a
gloo process group, diagnoses a tiny BERT on the same fixed batches as every other rank and writes
its Diagnosis as JSON plus how many batches it probed itself. Without WORLD_SIZE it runs alone."""

from __future__ import annotations

import json
import os
import sys

import torch

RESAMPLES = 50


def fixed_batches(n: int = 5) -> list[dict[str, torch.Tensor]]:
    """Deterministic batches with different padding per example and per batch."""
    g = torch.Generator().manual_seed(1234)
    out = []
    for i in range(n):
        b, t = 4, 8 + i
        ids = torch.randint(5, 1000, (b, t), generator=g)
        mask = torch.zeros(b, t, dtype=torch.long)
        for j in range(b):
            mask[j, : t - (i + 2 * j) % t] = 1
        out.append(
            {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])}
        )
    return out


def run() -> tuple[dict, int]:
    """Diagnose the fixed batches; returns the diagnosis as JSON data and the local probe-step count."""
    import transformers

    import inflora.diagnosis_steps as steps_module
    from inflora.diagnosis import diagnose
    from inflora.models import tiny_model

    transformers.logging.set_verbosity_error()
    # 8 random-init layers: a weak, batch-dependent profile, so bootstrap stability is fractional and
    # depends on which record is which batch (a rank-ordered gather would change it)
    model = tiny_model("bert", layers=8, seed=0)
    steps = []
    original = steps_module.probe_step  # the probe's step, as diagnose's measuring step calls it

    def counting_step(*args, **kwargs):
        steps.append(1)
        return original(*args, **kwargs)

    steps_module.probe_step = counting_step
    try:
        d = diagnose(model, fixed_batches(), resamples=RESAMPLES, progress=False)
    finally:
        steps_module.probe_step = original
    return json.loads(d.to_json()), len(steps)


def main(out_path: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    try:
        data, steps = run()
        rank = dist.get_rank() if distributed else 0
        world = dist.get_world_size() if distributed else 1
    finally:
        if distributed:
            dist.destroy_process_group()
    with open(out_path, "w") as f:
        json.dump({"rank": rank, "world": world, "steps": steps, "diagnosis": data}, f)


if __name__ == "__main__":
    main(sys.argv[1])
