"""The ReDo dormant-unit diagnostic inside the one-pass probe agrees with the remedy's own scorer."""

import math

import pytest
import torch

from inflora.data import load_task, probe_batches
from inflora.diagnosis import diagnose
from inflora.models import tiny_model
from inflora.metrics.dormant import dormant_fractions


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_probe_dormant_fractions_match_redo(family, tokenizer, data_dir):
    model = tiny_model(family, layers=3)
    with torch.no_grad():  # kill a third of block 1's FFN units so the fraction is far from 0
        ffn = model.base_model.get_submodule(
            "encoder.layer.1.intermediate.dense" if family == "bert" else "transformer.layer.1.ffn.lin1"
        )
        ffn.weight[: ffn.out_features // 3] = 0
        ffn.bias[: ffn.out_features // 3] = -10
    batches = probe_batches(
        load_task("rotten_tomatoes", "validation", data_dir), tokenizer, batches=2, batch_size=8, max_length=24
    )
    d = diagnose(model, batches, progress=False, resamples=5)
    expected = dormant_fractions(model, batches, (0.025, 0.1))
    for tau in (0.025, 0.1):
        got = [row[f"dormant_frac_{tau}"] for row in d.layers]
        assert got == pytest.approx(expected[tau], abs=1e-6)
    assert d.layers[1]["dormant_frac_0.1"] >= 0.3


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoder_ffn_units_are_measured_from_the_table(family, tokenizer, data_dir):
    """Decoders (GPT-2's Conv1D MLP, Llama's gated MLP) report dormant fractions that agree with ReDo's."""
    batches = probe_batches(
        load_task("rotten_tomatoes", "validation", data_dir), tokenizer, batches=2, batch_size=8, max_length=24
    )
    model = tiny_model(family, layers=2)
    d = diagnose(model, batches, progress=False, resamples=5)
    expected = dormant_fractions(model, batches, (0.1,))[0.1]
    got = [r["dormant_frac_0.1"] for r in d.layers]
    assert not any(math.isnan(v) for v in got) and got == pytest.approx(expected, abs=1e-6)
