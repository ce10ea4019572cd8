"""Runs from one checkpoint share its loaded copy (the experiment's target runs) and end exactly as
runs that load it themselves: the random state loading leaves (a new head's draw) comes along.

Runs use the session's tiny 4-block BERT with MiniLM's tokenizer on a subset of Rotten Tomatoes.
"""

import pytest
import torch
from safetensors.torch import load_file

from inflora.training import FinetuneConfig, finetune
from inflora.training.model_cache import ModelCache

SAME = ("accuracy", "history", "grad_profile", "best_epoch", "steps", "trainable_params", "layers", "delta_cka")


def config(init, **kw) -> FinetuneConfig:
    base = dict(
        model="minilm",
        init=str(init),
        new_head=True,
        epochs=1,
        limit_train=48,
        limit_eval=16,
        max_length=24,
        cka_examples=16,
        batch_size=16,
        log_every=2,
        lr=5e-3,
        decontaminate_against=None,
    )
    return FinetuneConfig(**{**base, **kw})


@pytest.mark.parametrize("strategies", [("lora-all", "head"), ("head", "head")])
def test_runs_from_a_cached_checkpoint_end_as_runs_that_load_it(tiny_bert_dir, tmp_path, strategies):
    models = ModelCache()
    for i, strategy in enumerate(strategies):
        cfg = config(tiny_bert_dir, strategy=strategy)
        alone = finetune(cfg, tmp_path / f"alone-{i}", progress=False)
        shared = finetune(cfg, tmp_path / f"shared-{i}", progress=False, models=models)
        assert [k for k in SAME if shared[k] != alone[k]] == []
        a = load_file(tmp_path / f"alone-{i}/checkpoints/best.safetensors")
        b = load_file(tmp_path / f"shared-{i}/checkpoints/best.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert models.loads == 1  # the second run copied the first one's load


def test_another_seed_loads_again_and_draws_another_head(tiny_bert_dir, tmp_path):
    models = ModelCache()
    runs = [
        finetune(config(tiny_bert_dir, strategy="head", seed=s), tmp_path / str(s), progress=False, models=models)
        for s in (1, 2)
    ]
    assert models.loads == 2 and runs[0]["history"] != runs[1]["history"]
