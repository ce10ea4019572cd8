"""Streaming attention entropy (beside SDPA) against the eager maps and a slow reference: every family,
GQA, sliding window, both paddings, causal; block outputs, loss and gradients equal the model's SDPA;
query sampling is unbiased with an honest standard error; bad masks and families fail clearly."""

import copy
import logging
import math

import pytest
import torch
import transformers

from _reference import entropy_reference
from inflora.errors import ArchitectureError, ConfigError
from inflora.metrics.entropy import AttentionEntropy, attention_entropy_sums
from inflora.metrics.streaming_entropy import streaming_entropy_sums
from inflora.models import arch_for, get_blocks, tiny_model
from inflora.models.attention import SINKS, STREAMING
from inflora.models.tiny import TINY_FAMILIES
from inflora.probe import LayerProbe, probe_step

transformers.logging.set_verbosity_error()
STREAMABLE = [f for f in TINY_FAMILIES if f != "mpnet"]


def padded_batch(task, side, seed=0, b=3, t=12, lengths=(12, 8, 5)):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (b, t), generator=g)
    mask = torch.zeros(b, t, dtype=torch.long)
    for i, n in enumerate(lengths):
        if side == "right":
            mask[i, :n] = 1
        else:
            mask[i, t - n :] = 1
    ids = ids.masked_fill(mask == 0, 0)
    labels = ids.masked_fill(mask == 0, -100) if task == "causal-lm" else torch.tensor([0, 1, 1][:b])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def sharpen(model, factor=6.0):
    """Random-init attention is near uniform; sharpen it so heads and layers differ."""
    spec = arch_for(model)
    with torch.no_grad():
        for i, block in enumerate(get_blocks(model)):
            block.get_submodule(spec.query).weight.mul_(factor * (i + 1))
            if spec.key != spec.query:
                block.get_submodule(spec.key).weight.mul_(factor)
    return model


def probe_rows(model, batch, attention, **entropy):
    with LayerProbe(model, ["attention_entropy"], attention=attention, attention_entropy=entropy) as probe:
        assert probe.attention_mode == attention
        loss = probe_step(model, probe, batch)
        return loss, probe.layer_results()


def assert_rows_match(got, want, rel=1e-5):
    for g, w in zip(got, want):
        assert g["head_entropy"] == pytest.approx(w["head_entropy"], rel=rel, abs=1e-7), g["layer"]
        assert g["attention_entropy"] == pytest.approx(w["attention_entropy"], rel=rel)
        assert g["attention_entropy_norm"] == pytest.approx(w["attention_entropy_norm"], rel=rel)


CASES = [(f, "classification", {}) for f in STREAMABLE] + [
    ("gpt2", "causal-lm", {}),
    ("llama", "causal-lm", {"num_key_value_heads": 2}),  # GQA: 4 query heads share 2 key/value heads
    ("qwen2", "classification", {"num_key_value_heads": 1}),
    ("mistral", "causal-lm", {"sliding_window": 4}),  # window shorter than the 12-token sequence
]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("family,task,config", CASES, ids=[f"{f}-{t[:3]}-{'-'.join(c) or 'base'}" for f, t, c in CASES])
def test_streaming_equals_eager_per_layer_and_head(family, task, config, side):
    model = sharpen(tiny_model(family, layers=2, task=task, **config))
    batch = padded_batch(task, side)
    _, eager = probe_rows(model, batch, "eager")
    _, streaming = probe_rows(model, batch, "streaming")
    assert_rows_match(streaming, eager)
    spread = [h for r in eager for h in r["head_entropy"]]
    assert max(spread) - min(spread) > 0.05  # heads really differ, so the comparison has teeth


def test_sliding_window_is_honoured():
    """The window changes the entropy (so the test above would catch a path that ignored it)."""
    batch = padded_batch("causal-lm", "right")
    windowed = sharpen(tiny_model("mistral", layers=2, task="causal-lm", sliding_window=4))
    full = sharpen(tiny_model("mistral", layers=2, task="causal-lm"))
    _, a = probe_rows(windowed, batch, "streaming")
    _, b = probe_rows(full, batch, "streaming")
    assert abs(a[0]["attention_entropy"] - b[0]["attention_entropy"]) > 0.05


@pytest.mark.parametrize("family,task", [("bert", "classification"), ("llama", "causal-lm"), ("gpt2", "causal-lm")])
def test_block_outputs_loss_and_grads_equal_the_models_own_sdpa(family, task):
    model = tiny_model(family, layers=2, task=task)
    model.set_attn_implementation("sdpa")
    twin = copy.deepcopy(model)
    batch = padded_batch(task, "right")

    def run(m, probe=None):
        outs = []
        hooks = [
            b.register_forward_hook(lambda mod, a, o: outs.append((o[0] if isinstance(o, tuple) else o).detach()))
            for b in get_blocks(m)
        ]
        loss = m(**batch).loss
        loss.backward()
        for h in hooks:
            h.remove()
        if probe is not None:
            probe.after_backward()
        return loss.detach(), outs, [p.grad.clone() for p in m.parameters() if p.grad is not None]

    want = run(model)
    with LayerProbe(twin, ["attention_entropy"]) as probe:
        assert twin.config._attn_implementation == STREAMING
        got = run(twin, probe)
        assert len(probe.plugins[0].layers[0]) == 1  # the entropy was measured in that very pass
    assert twin.config._attn_implementation == "sdpa"  # restored on close
    assert torch.equal(got[0], want[0])
    assert all(torch.equal(a, b) for a, b in zip(got[1], want[1]))
    assert len(got[2]) == len(want[2]) and all(torch.equal(a, b) for a, b in zip(got[2], want[2]))


def random_qk(b=2, h=4, hkv=2, t=11, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, t, d, generator=g) * 2, torch.randn(b, hkv, t, d, generator=g) * 2


def eager_map(q, k, allowed, scaling):
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    s = (q @ k.transpose(-1, -2)) * scaling
    return torch.softmax(s.masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0)


@pytest.mark.parametrize("chunk", [1, 4, 64, "fused"])
@pytest.mark.parametrize("kind", ["causal-none", "causal-bool-left", "bidir-bool-right", "bidir-float", "window"])
def test_pure_function_matches_slow_reference(kind, chunk):
    q, k = random_qk()
    b, t = q.shape[0], q.shape[2]
    pad = torch.ones(b, t, dtype=torch.long)
    causal = kind.startswith("causal") or kind == "window"
    if "left" in kind:
        pad[1, :4] = 0
    elif "right" in kind or kind == "bidir-float":
        pad[1, 7:] = 0
    tri = torch.ones(t, t, dtype=torch.bool).tril() if causal else torch.ones(t, t, dtype=torch.bool)
    if kind == "window":
        tri &= torch.ones(t, t, dtype=torch.bool).triu(-2)  # window 3
    allowed = pad.bool()[:, None, None, :] & tri
    mask = {
        "causal-none": None,
        "bidir-float": torch.zeros(b, 1, t, t).masked_fill(~allowed, torch.finfo(torch.float32).min),
    }.get(kind, allowed)
    path = {"fused": True} if chunk == "fused" else {"chunk": chunk, "fused": False}
    got = streaming_entropy_sums(q, k, mask, pad, scaling=0.3, causal=kind == "causal-none", **path)
    attn = eager_map(q, k, allowed, 0.3)
    if kind == "window":  # the reference knows no window: compare the raw sums with the eager sums instead
        raw, n, norm, nn_ = attention_entropy_sums(attn, pad, causal=True, window=3)
        assert got[0].tolist() == pytest.approx(raw.tolist(), rel=1e-6)
        assert got[2].tolist() == pytest.approx(norm.tolist(), rel=1e-6)
        return
    ref = entropy_reference(attn, pad, causal=causal)
    assert (got[0] / got[1]).tolist() == pytest.approx(ref["head"], rel=1e-6)
    assert (got[2] / got[3]).tolist() == pytest.approx(ref["head_norm"], rel=1e-6)
    assert all(float(v.abs().sum()) == 0 for v in got[4:])  # exact: no variance, nothing sampled


def test_sampled_queries_are_unbiased_with_honest_standard_errors():
    q, k = random_qk(b=2, h=2, hkv=2, t=40, d=4, seed=3)
    pad = torch.ones(2, 40, dtype=torch.long)
    pad[1, 30:] = 0
    exact = streaming_entropy_sums(q, k, None, pad, causal=True)
    exact_mean = float(exact[0].sum() / exact[1].sum())
    g = torch.Generator().manual_seed(0)
    means, ses = [], []
    for _ in range(300):
        s = streaming_entropy_sums(q, k, None, pad, causal=True, queries=6, generator=g)
        means.append(float(s[0].sum() / s[1].sum()))
        ses.append(math.sqrt(float(s[5])) / float(s[1][0]))
        assert float(s[7]) == 12  # 6 queries drawn in each of the two sequences
    mean = sum(means) / len(means)
    sd = (sum((m - mean) ** 2 for m in means) / (len(means) - 1)) ** 0.5
    assert abs(mean - exact_mean) < 4 * sd / math.sqrt(len(means))  # unbiased
    assert 0.7 < (sum(v * v for v in ses) / len(ses)) ** 0.5 / sd < 1.4  # the SE estimates the real spread
    assert mean != exact_mean and sd > 0


def test_sampled_probe_reports_estimate_and_standard_error():
    model = sharpen(tiny_model("llama", layers=2, task="causal-lm"))
    batch = padded_batch("causal-lm", "right")
    _, exact = probe_rows(model, batch, "streaming")
    _, est = probe_rows(model, batch, "streaming", queries=4, seed=1)
    _, all_queries = probe_rows(model, batch, "streaming", queries=100)
    assert_rows_match(all_queries, exact)  # N >= T is exact
    for e, x in zip(est, exact):
        assert e["attention_entropy_se"] > 0 and e["entropy_queries_sampled"] == 12
        assert abs(e["attention_entropy"] - x["attention_entropy"]) < 5 * e["attention_entropy_se"]
    assert "attention_entropy_se" not in exact[0]


@pytest.mark.parametrize("queries", [None, 5])
def test_an_additive_bias_mask_gives_the_entropy_of_the_biased_softmax(queries):
    """Doge's dynamic mask adds values other than 0 / -inf to the scores: the entropy is that of
    softmax(scale·qkᵀ + bias) over the kept keys (the chunked path; the fused identity needs no bias)."""
    q, k = random_qk(b=3, t=12)
    g = torch.Generator().manual_seed(3)
    bias = torch.randn(3, 1, 12, 12, generator=g) * 3
    bias[1, ..., 9:] = float("-inf")  # removed keys beside the biased ones
    pad = torch.ones(3, 12, dtype=torch.long)
    k_rep = k.repeat_interleave(2, dim=1)
    attn = torch.softmax((q @ k_rep.transpose(-1, -2)) * 8**-0.5 + bias, -1)
    raw, n, norm, nn_ = attention_entropy_sums(attn, pad)
    got = streaming_entropy_sums(q, k, bias, pad, queries=queries, generator=torch.Generator().manual_seed(0))
    if queries is None:
        assert (got[0] / got[1]).tolist() == pytest.approx((raw / n).tolist(), rel=1e-5)
    else:  # sampled rows of the bias: an unbiased estimate within a few standard errors
        acc = AttentionEntropy()
        acc.update_streaming(*got)
        est = acc.compute()
        assert abs(est["attention_entropy"] - float((raw / n).mean())) < 5 * est["attention_entropy_se"]
    plain = streaming_entropy_sums(q, k, None, pad)
    assert abs(float(plain[0].sum() - got[0].sum())) > 0.1  # the bias really changes the rows


@pytest.mark.parametrize(
    "mask,match",
    [
        (torch.ones(3, 12, 12, dtype=torch.bool), "shape"),
        (torch.ones(3, 1, 12, 12, dtype=torch.long), "dtype"),
    ],
)
def test_uninterpretable_masks_raise(mask, match):
    q, k = random_qk(b=3, t=12)
    with pytest.raises(ArchitectureError, match=match):
        streaming_entropy_sums(q, k, mask, torch.ones(3, 12))


def test_mpnet_falls_back_to_eager_with_one_line_and_streaming_is_refused(caplog):
    model = tiny_model("mpnet", layers=2)
    batch = padded_batch("classification", "right")
    with caplog.at_level(logging.INFO, logger="inflora"):
        with LayerProbe(model, ["attention_entropy"]) as probe:
            assert probe.attention_mode == "eager"
            probe_step(model, probe, batch)
    lines = [r.getMessage() for r in caplog.records if "attention interface" in r.getMessage()]
    assert len(lines) == 1 and "mpnet" in lines[0]
    with pytest.raises(ConfigError, match="Families that can: .*llama.*mistral"):
        LayerProbe(model, ["attention_entropy"], attention="streaming")
    assert model.config._attn_implementation == "eager"
    with pytest.raises(ConfigError, match="unknown attention mode 'fast'; choose one of streaming, eager"):
        LayerProbe(tiny_model("bert", layers=1), ["attention_entropy"], attention="fast")


def test_switching_attention_behind_the_probes_back_fails_loudly():
    model = tiny_model("bert", layers=2)
    with LayerProbe(model, ["attention_entropy"]) as probe:
        model.set_attn_implementation("sdpa")
        with pytest.raises(ArchitectureError, match="ran no streaming attention"):
            probe_step(model, probe, padded_batch("classification", "right"))
    assert not any(m in SINKS for m in model.modules())  # sinks removed on close


def test_gradient_checkpointing_recompute_is_counted_once():
    model = tiny_model("llama", layers=2, task="causal-lm")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    batch = padded_batch("causal-lm", "right")
    with LayerProbe(model, ["attention_entropy"]) as probe:
        probe_step(model, probe, batch)
        assert [len(acc) for acc in probe.plugins[0].layers] == [1, 1]


@pytest.mark.real
def test_real_minilm_streaming_equals_eager_on_rt_validation(minilm, data_dir):
    from inflora.data import load_task, probe_batches

    model, tok = minilm
    batches = probe_batches(
        load_task("rotten_tomatoes", "validation", str(data_dir)), tok, batches=2, batch_size=16, max_length=64
    )
    results = {}
    for mode in ("eager", "streaming"):
        with LayerProbe(model, ["attention_entropy"], attention=mode) as probe:
            for batch in batches:
                probe_step(model, probe, batch)
            results[mode] = probe.layer_results()
    assert_rows_match(results["streaming"], results["eager"])
    assert model.config._attn_implementation == "eager"


GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts check it on one)")


@pytest.mark.parametrize(
    "device,dtype",
    [
        ("cpu", torch.bfloat16),
        pytest.param("cuda", torch.float32, marks=GPU),
        pytest.param("cuda", torch.bfloat16, marks=GPU),
    ],
)
def test_streaming_matches_eager_on_device_and_dtype(device, dtype):
    model = sharpen(tiny_model("llama", layers=2, task="causal-lm", num_key_value_heads=2)).to(device, dtype)
    batch = {k: v.to(device) for k, v in padded_batch("causal-lm", "left").items()}
    _, eager = probe_rows(model, batch, "eager")
    _, streaming = probe_rows(model, batch, "streaming")
    assert_rows_match(streaming, eager, rel=1e-5 if dtype == torch.float32 else 2e-2)


def test_training_profile_streams_entropy_and_keeps_sdpa():
    from inflora.training.grad_profile import GradProfileRecorder

    model = sharpen(tiny_model("llama", layers=2, task="causal-lm", num_key_value_heads=2))
    model.set_attn_implementation("sdpa")
    batch = padded_batch("causal-lm", "right")
    _, want = probe_rows(copy.deepcopy(model), batch, "eager")
    recorder = GradProfileRecorder(model, every=2)
    assert model.config._attn_implementation == STREAMING  # SDPA kernel, entropy beside it
    for step in range(2):
        logged = recorder.start_step(step)
        model(**batch).loss.backward()
        row = recorder.finish_step(step, 0.0)
        model.zero_grad(set_to_none=True)
        assert (row is not None) == logged == (step == 0)
        if logged:
            assert row["attention_entropy"] == pytest.approx([w["attention_entropy"] for w in want], rel=1e-5)
    recorder.close()
    assert model.config._attn_implementation == "sdpa"
    mpnet = tiny_model("mpnet", layers=2)
    recorder = GradProfileRecorder(mpnet, every=1)  # no interface: entropy left out, attention untouched
    assert not recorder.entropy and mpnet.config._attn_implementation == "eager"
    recorder.close()
