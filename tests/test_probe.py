"""The one-pass probe on every architecture: values against references from separate passes, frozen
layers, memory (no attention map outlives its hook), SDPA handling, and that diagnosing changes nothing."""

import copy
import gc
import logging
import math
import weakref

import pytest
import torch
import transformers

from _reference import activation_grad_reference, entropy_reference, param_grad_reference
from inflora.diagnosis import diagnose
from inflora.errors import ArchitectureError, DataError
from inflora.metrics import EntropyProbe
from inflora.models import arch_for, get_attention, get_blocks, parameter_groups, tiny_model
from inflora.models.tiny import TINY_FAMILIES
from inflora.probe import LayerProbe, probe_step

transformers.logging.set_verbosity_error()


CASES = [(f, "classification") for f in TINY_FAMILIES] + [("gpt2", "causal-lm"), ("llama", "causal-lm")]
IDS = [f"{f}-{'lm' if t == 'causal-lm' else 'cls'}" for f, t in CASES]


def make_batch(task, seed=0, b=3, t=9, lengths=(9, 6, 3)):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (b, t), generator=g)
    mask = torch.zeros(b, t, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    ids = ids.masked_fill(mask == 0, 0)
    labels = ids.masked_fill(mask == 0, -100) if task == "causal-lm" else torch.tensor([0, 1, 1])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def sharpen_attention(model, factor=6.0):
    """Random-init models attend almost uniformly; scale the query weights so entropies differ by layer
    and head (otherwise a per-layer comparison would pass for nearly any code)."""
    spec = arch_for(model)
    with torch.no_grad():
        for i, block in enumerate(get_blocks(model)):
            block.get_submodule(spec.query).weight.mul_(factor * (i + 1))
            if spec.key != spec.query:  # GPT-2 fuses q, k, v in one projection
                block.get_submodule(spec.key).weight.mul_(factor)
    return model


def reference_pass(model, batch, spec):
    """A separate plain forward with output_attentions=True and retained block-output gradients."""
    outputs = []

    def keep(module, args, output):
        h = output[0] if isinstance(output, (tuple, list)) else output
        h.retain_grad()
        outputs.append(h)

    handles = [b.register_forward_hook(keep) for b in get_blocks(model)]
    try:
        out = model(**batch, output_attentions=True)
        out.loss.backward()
    finally:
        for h in handles:
            h.remove()
    mask = batch["attention_mask"]
    ent = [entropy_reference(a, mask, causal=spec.causal) for a in out.attentions]
    grads = [activation_grad_reference(h.grad, mask) for h in outputs]
    groups = parameter_groups(model)
    params = [param_grad_reference(p for _, p in groups[f"block.{i}"]) for i in range(len(outputs))]
    model.zero_grad(set_to_none=True)
    return ent, grads, params


@pytest.mark.parametrize("family,task", CASES, ids=IDS)
def test_one_probe_pass_matches_separate_reference_passes(family, task):
    model = sharpen_attention(tiny_model(family, layers=3, task=task))
    spec = arch_for(model)
    batch = make_batch(task)
    with LayerProbe(model) as probe:
        loss = probe_step(model, probe, batch)
        rows = probe.layer_results()
    assert math.isfinite(loss) and len(rows) == 3
    ent, grads, params = reference_pass(model, batch, spec)
    for row, e, g, p in zip(rows, ent, grads, params):
        assert all(
            math.isfinite(row[k]) for k in ("attention_entropy", "attention_entropy_norm", "activation_grad_norm")
        )
        assert row["activation_grad_norm"] > 0 and row["param_grad_norm"] > 0
        assert row["attention_entropy"] == pytest.approx(e["mean"], rel=1e-5, abs=1e-6)
        assert row["attention_entropy_norm"] == pytest.approx(e["mean_norm"], rel=1e-5, abs=1e-6)
        assert row["head_entropy"] == pytest.approx(e["head"], rel=1e-5, abs=1e-6)
        assert row["activation_grad_norm"] == pytest.approx(g["per_token"], rel=1e-5)
        assert row["activation_grad_frobenius"] == pytest.approx(g["frobenius"], rel=1e-5)
        assert row["param_grad_norm"] == pytest.approx(p, rel=1e-5)
    # the sharpened maps really differ by layer, so the comparison above has teeth
    assert max(r["attention_entropy"] for r in rows) - min(r["attention_entropy"] for r in rows) > 0.05


@pytest.mark.parametrize("family,task", [("bert", "classification"), ("llama", "causal-lm"), ("gpt2", "causal-lm")])
def test_activation_grads_exist_below_frozen_layers(family, task):
    model = tiny_model(family, layers=4, task=task)
    batches = [make_batch(task, seed=s) for s in range(2)]
    trainable = diagnose(model, batches, progress=False, resamples=0)
    frozen_model = copy.deepcopy(model)
    for p in frozen_model.parameters():  # everything frozen, embeddings and head included
        p.requires_grad_(False)
    frozen = diagnose(frozen_model, batches, progress=False, resamples=0)
    for a, b in zip(trainable.layers, frozen.layers):
        assert b["activation_grad_norm"] > 0
        # ∂L/∂h does not depend on which parameters are trainable
        assert b["activation_grad_norm"] == pytest.approx(a["activation_grad_norm"], rel=1e-5)
        assert b["param_grad_norm"] == 0.0 and a["param_grad_norm"] > 0
    assert frozen.groups["param_grad_norm_embeddings"] == 0.0 and frozen.groups["param_grad_norm_head"] == 0.0
    assert trainable.groups["param_grad_norm_embeddings"] > 0 and trainable.groups["param_grad_norm_head"] > 0


def test_partially_frozen_blocks_report_zero_param_grads():
    model = tiny_model("bert", layers=4)
    for block in get_blocks(model)[:2]:
        block.requires_grad_(False)
    d = diagnose(model, [make_batch("classification")], progress=False, resamples=0)
    assert [r["param_grad_norm"] == 0.0 for r in d.layers] == [True, True, False, False]
    assert all(r["activation_grad_norm"] > 0 for r in d.layers)


@pytest.mark.parametrize("family,attention", [("bert", "eager"), ("mpnet", None), ("llama", "eager"), ("llama", None)])
def test_probe_keeps_no_attention_map_alive(family, attention):
    model = tiny_model(family, layers=3)
    spec = arch_for(model)
    seen = []  # weak references to every attention map the model produced (None: streaming makes none)
    handles = [
        get_attention(b, spec).register_forward_hook(
            lambda m, a, o: seen.append(None if o[1] is None else weakref.ref(o[1]))
        )
        for b in get_blocks(model)
    ]
    batch = make_batch("classification")
    with LayerProbe(model, attention=attention) as probe:
        probe_step(model, probe, batch)
        gc.collect()
        assert len(seen) == 3
        assert all(r is None or r() is None for r in seen), "an attention map outlived the probe step"
        assert (probe.attention_mode == "streaming") == all(r is None for r in seen)

        # nothing of shape [B, H, T, T] is stored anywhere on the probe or its accumulators
        def walk(obj, depth=0):
            if torch.is_tensor(obj):
                yield obj
            elif depth < 6 and isinstance(obj, (list, tuple)):
                for x in obj:
                    yield from walk(x, depth + 1)
            elif depth < 6 and isinstance(obj, dict):
                for x in obj.values():
                    yield from walk(x, depth + 1)
            elif depth < 6 and hasattr(obj, "__dict__") and not isinstance(obj, torch.nn.Module):
                yield from walk(vars(obj), depth + 1)

        stored = list(walk(probe))
        assert stored and all(t.dim() <= 2 for t in stored)
        ent = next(p for p in probe.plugins if isinstance(p, EntropyProbe))
        assert all(len(acc) == 1 for acc in ent.layers)
    for h in handles:
        h.remove()


def test_entropy_hook_returns_nothing():
    # A forward hook that returned a value would replace the module output; this one only reduces it.
    model = tiny_model("bert", layers=2)
    with LayerProbe(model, ["attention_entropy"], attention="eager") as probe:
        probe.ctx.attention_mask = torch.ones(1, 4, dtype=torch.long)
        plugin = next(p for p in probe.plugins if isinstance(p, EntropyProbe))
        acc = plugin.layers[0]
        hook = plugin._hook(probe.ctx, 0)
        attn = torch.full((1, 2, 4, 4), 0.25)
        assert hook(None, (), (torch.zeros(1, 4, 8), attn)) is None
        assert acc.compute()["attention_entropy"] == pytest.approx(math.log(4))


def test_sdpa_model_is_switched_to_eager_with_a_message_and_back(caplog):
    eager = sharpen_attention(tiny_model("bert", layers=3))
    sdpa = copy.deepcopy(eager)
    sdpa.set_attn_implementation("sdpa")
    batch = make_batch("classification")
    with caplog.at_level(logging.WARNING):
        with LayerProbe(sdpa, attention="eager") as probe:
            assert sdpa.config._attn_implementation == "eager"
            probe_step(sdpa, probe, batch)
            got = probe.layer_results()
    assert "switching attention from 'sdpa' to 'eager'" in caplog.text
    assert sdpa.config._attn_implementation == "sdpa"  # restored when the probe is closed
    with LayerProbe(eager, attention="eager") as probe:
        probe_step(eager, probe, batch)
        want = probe.layer_results()
    for a, b in zip(got, want):
        assert math.isfinite(a["attention_entropy"])
        assert a["attention_entropy"] == pytest.approx(b["attention_entropy"], rel=1e-6)


def test_probe_never_returns_empty_entropies_when_maps_are_missing():
    # If attention is switched to SDPA behind the probe's back, the hook must fail loudly.
    model = tiny_model("bert", layers=2)
    with LayerProbe(model, attention="eager") as probe:
        model.set_attn_implementation("sdpa")
        with pytest.raises(ArchitectureError, match="no attention map.*eager"):
            probe_step(model, probe, make_batch("classification"))


def test_all_padding_batch_is_rejected():
    model = tiny_model("bert", layers=2)
    batch = make_batch("classification")
    batch["attention_mask"].zero_()
    with LayerProbe(model) as probe, pytest.raises(DataError, match="only padding"):
        probe_step(model, probe, batch)


def test_unsupported_model_is_rejected_before_anything_changes():
    with pytest.raises(ArchitectureError, match="unsupported architecture 'Sequential'"):
        LayerProbe(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.mark.parametrize("start_training", [False, True])
def test_diagnose_restores_mode_leaves_no_grads_and_changes_no_parameter(start_training):
    model = tiny_model("bert", layers=3).train(start_training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    d = diagnose(model, [make_batch("classification", seed=s) for s in range(3)], progress=False, resamples=20)
    assert model.training is start_training
    assert all(m.training is start_training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())
    assert d.num_layers == 3


def test_diagnose_keeps_the_callers_gradients_and_restores_mode_after_an_error():
    model = tiny_model("bert", layers=2).train()
    model(**make_batch("classification")).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    diagnose(model, [make_batch("classification", seed=1)], progress=False, resamples=0)
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, grads[n]), n
    bad = make_batch("classification")
    bad["attention_mask"].zero_()
    with pytest.raises(DataError):
        diagnose(model, [bad], progress=False)
    assert model.training
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, grads[n]), n
