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
    if strategy == "diagnose":  # every parameter's gradient, dropout off (diagnose's default)
        return model.requires_grad_(True).eval()
    applied = apply_strategy(
        strategy,
        model,
        StrategyOptions(layers=spec.layers, k=spec.k, r=spec.r, seed=42, extra={"lisa_interval": spec.lisa_interval}),
    )
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
    for strategy in (*STRATEGIES, "diagnose"):
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


def within(planned, measured: dict, tolerance: float = 0.15) -> bool:
    return abs(planned.peak_above_model - measured["peak_above_model"]) <= tolerance * measured["peak_above_model"]


@pytest.mark.parametrize(
    "model,batch,length,strategies",
    [
        ("tiny-qwen2", 64, 128, ("full", "lora-inflection")),
        ("tiny-bert", 64, 128, ("lora-all",)),
        ("minilm", 8, 128, ("lora-inflection",)),
    ],
)
def test_planned_peak_within_15_percent_of_measured(model, batch, length, strategies):
    from inflora.training.memory_measure import measure

    spec = PlanSpec(model, batch_size=batch, length=length, layers=[2], steps=2)
    for strategy in strategies:
        planned, measured = plan_strategy(spec, strategy), measure(spec, strategy, steps=2, threads=1)
        assert measured["trainable"] == planned.trainable
        assert within(planned, measured), (strategy, planned.peak_above_model, measured["peak_above_model"])


@pytest.mark.slow
def test_every_strategy_on_minilm_within_15_percent():
    from inflora.training.memory_measure import measured_rows

    spec = PlanSpec(
        "minilm",
        batch_size=16,
        length=128,
        layers=[2, 3],
        steps=3,
        strategies=("full", "head", "shallow", "lora-all", "lora-inflection", "lisa"),
    )
    for row in measured_rows(spec, [plan_strategy(spec, s) for s in spec.strategies], steps=3, threads=1):
        assert abs(row["error"]) <= 0.15, row


def cli(*args):
    from typer.testing import CliRunner

    from inflora.cli import app

    return CliRunner().invoke(app, ["plan", *map(str, args)], env={"COLUMNS": "80"})


def test_cli_table_fits_80_columns_and_json_matches_the_library():
    import json

    res = cli("--model", "tiny-qwen2", "--layers", "1,2")
    assert res.exit_code == 0, res.output
    assert max(map(len, res.output.splitlines())) <= 80 and "lora-inflection" in res.output
    res = cli("--model", "tiny-qwen2", "--layers", "1,2", "--strategies", "full,lisa", "--json")
    rows = json.loads(res.output)["strategies"]
    spec = PlanSpec("tiny-qwen2", layers=[1, 2], strategies=("full", "lisa"))
    assert rows == [plan_strategy(spec, s).to_dict() for s in ("full", "lisa")]


def test_lisa_optimizer_state_grows_to_every_block():
    first, long_run = (
        plan_strategy(PlanSpec("tiny-qwen2", k=1, lisa_interval=1, steps=steps), "lisa") for steps in (1, None)
    )
    full = plan_strategy(PlanSpec("tiny-qwen2"), "full")
    assert first.optimizer < long_run.optimizer == full.optimizer


@pytest.mark.parametrize(
    "args,message",
    [
        (("--model", "tiny-qwen2", "--layers", "1,7"), "outside this 4-block model"),
        (("--model", "tiny-gpt2"), "no activation formula"),
        (("--model", "tiny-nonsense"), "unknown model type 'nonsense'"),
        (("--strategies", "full,everything"), "unknown strategy"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    res = cli(*args)
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output


def test_a_config_that_cannot_be_built_on_meta_is_exit_2(tmp_path):
    import json

    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "qwen2",
                "vocab_size": -1,
                "hidden_size": 32,
                "num_attention_heads": 4,
                "num_hidden_layers": 1,
            }
        )
    )
    res = cli("--model", tmp_path, "--strategies", "full")
    assert res.exit_code == 2 and res.output.startswith("error:"), res.output
