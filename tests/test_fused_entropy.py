"""Entropy from the fused kernel's log-sum-exp (issue 19): the kernel path is really taken on this
CPU, it equals eager maps on the tiny families (padding both sides, causal, sliding window, GQA) and
the chunked path (exact and sampled), and a kernel that refuses its inputs falls back with one line."""

import logging

import pytest
import torch
import transformers
from test_streaming_entropy import assert_rows_match, padded_batch, sharpen

from inflora.metrics import fused_entropy
from inflora.metrics.fused_entropy import fused_row_entropy
from inflora.metrics.streaming_entropy import chunk_entropy, streaming_entropy_sums
from inflora.models import tiny_model
from inflora.probe import LayerProbe, probe_step

transformers.logging.set_verbosity_error()

CASES = [
    ("bert", "classification", {}),
    ("gpt2", "causal-lm", {}),
    ("llama", "causal-lm", {"num_key_value_heads": 2}),  # GQA
    ("qwen2", "causal-lm", {"num_key_value_heads": 1}),  # multi-query
    ("mistral", "causal-lm", {"sliding_window": 4}),  # window shorter than the 12 tokens
]


def rows(model, batch, attention, **entropy):
    with LayerProbe(model, ["attention_entropy"], attention=attention, attention_entropy=entropy) as probe:
        probe_step(model, probe, batch)
        return probe.layer_results()


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("family,task,config", CASES, ids=[f"{f}-{'-'.join(c) or 'base'}" for f, _, c in CASES])
def test_fused_path_is_taken_and_equals_eager_and_chunked(family, task, config, side, caplog):
    model = sharpen(tiny_model(family, layers=2, task=task, **config))
    batch = padded_batch(task, side)
    with caplog.at_level(logging.INFO, logger="inflora.metrics.fused_entropy"):
        fused = rows(model, batch, "streaming")
    assert not [r for r in caplog.records if "chunked path" in r.getMessage()]  # no fallback on this CPU
    assert_rows_match(fused, rows(model, batch, "eager"))
    assert_rows_match(fused, rows(model, batch, "streaming", fused=False), rel=1e-6)


def test_fused_rows_equal_chunked_rows_with_gqa_and_padding():
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(2, 6, 40, 16, generator=g) * 3, torch.randn(2, 2, 40, 16, generator=g) * 3
    valid = torch.ones(2, 1, 40, 40, dtype=torch.bool).tril()
    valid[1, ..., :9] = False  # left padding: keys 0..8 of sequence 1 removed
    valid[1, :, :9, :9] = torch.eye(9, dtype=torch.bool)  # (as transformers keeps padded rows finite)
    got = fused_row_entropy(q, k, valid, scaling=0.25, causal=False)
    want = chunk_entropy(q, k, valid, torch.arange(40).expand(2, 40), scaling=0.25, causal=False)
    assert got is not None and got.shape == (2, 6, 40)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)
    assert float(want.std()) > 0.1  # rows differ: a constant could not pass


def test_sampled_queries_on_the_fused_path_equal_the_chunked_path():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 4, 50, 8, generator=g) * 2, torch.randn(2, 2, 50, 8, generator=g) * 2
    pad = torch.ones(2, 50, dtype=torch.long)
    pad[1, 35:] = 0
    for mask in (None, pad.bool()[:, None, None, :] & torch.ones(50, 50, dtype=torch.bool).tril()):
        a = streaming_entropy_sums(
            q, k, mask, pad, causal=mask is None, queries=7, generator=torch.Generator().manual_seed(1)
        )
        b = streaming_entropy_sums(
            q, k, mask, pad, causal=mask is None, queries=7, generator=torch.Generator().manual_seed(1), fused=False
        )
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
        assert float(a[7]) == 14


def test_a_refused_input_falls_back_with_one_line_and_empty_inputs_do_not_crash(caplog):
    q, k = torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 8)
    wrong_batch = torch.ones(2, 1, 8, 8, dtype=torch.bool)  # the CPU kernel refuses a mask of another batch
    fused_entropy._LOGGED.clear()
    with caplog.at_level(logging.INFO, logger="inflora.metrics.fused_entropy"):
        assert fused_row_entropy(q, k, wrong_batch, scaling=0.3, causal=False) is None
        assert fused_row_entropy(q, k, wrong_batch, scaling=0.3, causal=False) is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "refused" in lines[0] and "chunked path" in lines[0]
    empty = fused_row_entropy(q[:, :, :0], k, None, scaling=0.3, causal=False)
    assert empty.shape == (1, 2, 0)


def test_non_finite_inputs_stay_non_finite():
    q, k = torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 8)
    q[0, 1, 3, 0] = float("nan")
    ent = fused_row_entropy(q, k, None, scaling=0.3, causal=True)
    assert torch.isnan(ent[0, 1, 3]) and torch.isfinite(ent[0, 0]).all()
