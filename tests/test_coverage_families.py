"""Families that issue 22's coverage benchmark found failing, fixed generically: each checks the
structure discovery now reads, or that the probe says what it cannot measure instead of crashing
or printing a number over the wrong tokens."""

import math

import pytest
import transformers

from inflora.models import arch_for, get_blocks, get_ffn, tiny_model
from inflora.probe import LayerProbe, probe_step
from test_streaming_entropy import assert_rows_match, padded_batch, probe_rows, sharpen

transformers.logging.set_verbosity_error()


@pytest.mark.parametrize(
    "family,query",
    [
        ("doge", "self_attn.q_proj"),  # a dynamic additive mask: the biased softmax, streamed
        ("minicpm5_moe", "self_attn.q_gate_proj"),  # query and output gate in one projection
    ],
)
def test_streaming_equals_eager(family, query):
    model = sharpen(tiny_model(family, layers=2, task="causal-lm"))
    spec = arch_for(model)
    assert spec.query == query and spec.attention_interface
    batch = padded_batch("causal-lm", "left")
    _, eager = probe_rows(model, batch, "eager")
    _, streaming = probe_rows(model, batch, "streaming")
    assert_rows_match(streaming, eager)
    spread = [h for r in eager for h in r["head_entropy"]]
    assert max(spread) - min(spread) > 0.05


def test_hybrids_read_the_ffn_where_it_is_and_name_blocks_without_attention():
    nemotron = tiny_model("nemotron_h", task="causal-lm")  # mamba, MoE, attention and MLP blocks, one each
    spec = arch_for(nemotron)
    kinds = [type(b.mixer).__name__ for b in get_blocks(nemotron)]
    assert spec.attention == "mixer" and (spec.ffn_up, spec.ffn_down) == ("mixer.up_proj", "mixer.down_proj")
    assert spec.attention_free_blocks == tuple(i for i, k in enumerate(kinds) if "Attention" not in k)
    assert [get_ffn(b, spec) is not None for b in get_blocks(nemotron)] == ["MLP" in k or "MoE" in k for k in kinds]
    olmo = arch_for(tiny_model("olmo_hybrid", task="causal-lm"))  # linear- and softmax-attention block classes
    assert (olmo.attention, olmo.ffn_down) == ("self_attn", "mlp.down_proj") and len(olmo.attention_free_blocks) == 3
    falcon = arch_for(tiny_model("falcon_h1", layers=2, task="causal-lm"))  # the mamba mixer writes after the FFN
    assert (falcon.ffn_up, falcon.ffn_down) == ("feed_forward.up_proj", "feed_forward.down_proj")


@pytest.mark.parametrize(
    "family,targets",
    [
        ("mamba2", ("mixer.in_proj", "mixer.out_proj")),  # no FFN: the mixer's own projections
        ("rwkv", ("feed_forward.key", "feed_forward.value")),  # time-mixing is not softmax attention
    ],
)
def test_attention_free_families_get_lora_targets_and_say_entropy_does_not_apply(family, targets):
    spec = arch_for(tiny_model(family, layers=2, task="causal-lm"))
    assert spec.attention is None and spec.attention_free_blocks == (0, 1)
    assert spec.lora_targets == targets and "entropy does not apply" in spec.entropy_note


def test_fnet_fourier_blocks_are_found_by_layer_name():
    spec = arch_for(tiny_model("fnet", layers=2))
    assert spec.blocks == "encoder.layer" and spec.attention is None
    assert (spec.ffn_up, spec.ffn_down) == ("intermediate.dense", "output.dense")


def _probe(model, task, side="right", steps=1, diagnostics=("attention_entropy",)):
    with LayerProbe(model, list(diagnostics), attention="eager") as probe:
        for seed in range(steps):
            probe_step(model, probe, padded_batch(task, side, seed=seed))
        return probe.layer_results(), probe.summaries().get("attention_entropy", {}), probe


@pytest.mark.parametrize(
    "family,why",
    [
        ("mra", "returns no attention map even under eager attention"),  # multi-resolution approximation
        ("longformer", "is not over the input's tokens"),  # banded local scores
        ("big_bird", "did not run"),  # block-sparse swapped for full attention on short inputs
    ],
)
def test_attention_that_cannot_be_measured_is_said_and_left_nan(family, why):
    extra = {"attention_type": "block_sparse"} if family == "big_bird" else {}
    model = tiny_model(family, layers=2, **extra)
    rows, said, _ = _probe(model, "classification")
    assert said["unmeasured_layers"] == [0, 1] and why in said["why"]
    assert all(math.isnan(r["attention_entropy"]) for r in rows)


def test_a_block_run_twice_per_forward_keeps_one_record_per_batch():
    model = tiny_model("dory", layers=2, task="causal-lm")
    calls = []
    hook = get_blocks(model)[0].register_forward_hook(lambda *a: calls.append(1))
    rows, _, probe = _probe(model, "causal-lm", "left", steps=2, diagnostics=("attention_entropy", "activation_grad"))
    hook.remove()
    assert len(calls) == 4  # Dory runs each block twice per forward
    assert probe.num_batches() == 2
    resampled = probe.layer_results([1, 1])  # a bootstrap resample indexes batches, not calls
    assert all(math.isfinite(r["activation_grad_norm"]) for r in rows + resampled)
    assert resampled[0]["activation_grad_norm"] != rows[0]["activation_grad_norm"]
