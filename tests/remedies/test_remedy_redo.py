"""ReDo: scores vs a slow reference, recycling invariants, transformer scoring, stream behaviour."""

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from inflora.errors import ConfigError
from inflora.remedies import (
    REMEDIES,
    DormantAccumulator,
    ReDo,
    dormant_fractions,
    dormant_mask,
    dormant_scores,
    find_units,
    layer_scores,
    recycle,
)
from inflora.remedies.redo import expand_to_inputs

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))


def slow_scores(acts):
    """Loop reference: per unit mean |h| over batch, divided by the layer mean + 1e-9."""
    b, h = acts.shape
    means = [sum(abs(float(acts[i, j])) for i in range(b)) / b for j in range(h)]
    avg = sum(means) / h
    return torch.tensor([m / (avg + 1e-9) for m in means], dtype=torch.float64)


def test_scores_match_slow_reference_and_stream():
    torch.manual_seed(0)
    acts = torch.relu(torch.randn(50, 7, dtype=torch.float64))
    acts[:, 2] = 0
    ref = slow_scores(acts)
    assert torch.allclose(dormant_scores(acts).double(), ref, atol=1e-5)
    acc = DormantAccumulator()
    for chunk in acts.split(13):
        acc.update(chunk)
    assert torch.allclose(acc.scores().double(), ref, atol=1e-5)
    fr = acc.fractions((0.0, 0.5))
    assert fr[0.0] == pytest.approx(1 / 7) and fr[0.5] == pytest.approx(float((ref <= 0.5).double().mean()))


def test_scores_invariant_to_scale_and_tau_zero_uses_isclose():
    acts = torch.relu(torch.randn(30, 9))
    assert torch.allclose(dormant_scores(acts), dormant_scores(acts * 37.0), atol=1e-6)
    s = torch.tensor([0.0, 1e-12, 0.01, 1.0])
    assert dormant_mask(s, 0.0).tolist() == [True, True, False, False]
    assert dormant_mask(s, 0.025).tolist() == [True, True, True, False]


def test_conv_scores_average_over_space_and_token_mask():
    acts = torch.relu(torch.randn(4, 3, 5, 5))
    per_ch = acts.abs().mean(dim=(0, 2, 3))
    assert torch.allclose(dormant_scores(acts), per_ch / per_ch.mean(), atol=1e-6)
    tok = torch.rand(2, 4, 6)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    ref = torch.cat([tok[0, :2], tok[1]]).mean(0)
    assert torch.allclose(dormant_scores(tok, -1, mask), ref / ref.mean(), atol=1e-6)


def _dead_model():
    model = mlp()
    with torch.no_grad():
        model[0].bias[[1, 4, 9]] = -1e4  # these units are dead on any input
    return model


def test_recycle_tau_zero_keeps_outputs_bit_identical():
    model, x = _dead_model(), torch.randn(64, 8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(x).sum().backward()
    opt.step()
    before = model(x).detach().clone()
    rem = ReDo(tau=0.0, every=1)
    rem.wrap_model(model)
    rem.after_step(model, opt, 0, x)
    assert rem.metrics()["redo.recycled"] >= 3
    assert torch.equal(model(x), before)
    assert (model[0].bias[[1, 4, 9]] == 0).all()


def test_recycle_tau_positive_changes_output_by_the_zeroed_contribution():
    model, x = mlp(1), torch.randn(64, 8)
    units = find_units(model)
    h1 = torch.relu(model[0](x)).detach()
    h2 = torch.relu(model[2](h1)).detach()
    scores = dormant_scores(h2)
    dead = dormant_mask(scores, 0.6)
    assert 0 < int(dead.sum()) < len(dead)
    w_out = model[4].weight.detach().clone()
    before = model(x).detach()
    recycle(units[1], dead)
    removed = h2[:, dead] @ w_out[:, dead].T
    assert torch.allclose(before - model(x).detach(), removed, atol=1e-5)


@pytest.mark.parametrize("adam_step", ["reset_tensor", "keep"])
def test_recycle_touches_exactly_the_right_entries(adam_step):
    model, x = _dead_model(), torch.randn(32, 8)
    extra = nn.Parameter(torch.zeros(1))
    # two param groups: the state must be found by parameter, not by position
    opt = torch.optim.Adam([{"params": [extra]}, {"params": list(model.parameters())[::-1]}], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        (model(x).pow(2).sum() + extra.sum()).backward()
        opt.step()
    snap = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()}
    w_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    units = find_units(model)
    assert [u.name for u in units] == ["0", "2"]  # the output layer is never a unit layer
    dead = torch.zeros(16, dtype=torch.bool)
    dead[[1, 4, 9]] = True
    recycle(units[0], dead, opt, adam_step)
    bound = 1 / math.sqrt(8)
    w = model[0].weight
    assert (w[dead].abs() <= bound).all() and not torch.equal(w[dead], w_before["0.weight"][dead])
    assert torch.equal(w[~dead], w_before["0.weight"][~dead])
    assert (model[0].bias[dead] == 0).all() and (model[2].weight[:, dead] == 0).all()
    assert torch.equal(model[2].weight[:, ~dead], w_before["2.weight"][:, ~dead])
    assert torch.equal(model[2].bias, w_before["2.bias"]) and torch.equal(model[4].weight, w_before["4.weight"])
    for p, idx in ((model[0].weight, dead), (model[0].bias, dead), (model[2].weight, (slice(None), dead))):
        st, old = opt.state[p], snap[id(p)]
        for key in ("exp_avg", "exp_avg_sq"):
            assert (st[key][idx] == 0).all()
            keep = torch.ones_like(st[key], dtype=torch.bool)
            keep[idx] = False
            assert torch.equal(st[key][keep], old[key][keep])
        assert float(st["step"]) == (0.0 if adam_step == "reset_tensor" else 3.0)
    for p in (model[2].bias, model[4].weight, model[4].bias):
        assert all(torch.equal(opt.state[p][k], snap[id(p)][k]) for k in ("exp_avg", "exp_avg_sq", "step"))


def test_conv_to_linear_zeroes_exactly_hw_columns_per_channel():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    units = find_units(model)
    assert len(units) == 1
    dead = torch.tensor([False, True, False, False])
    before = model[3].weight.detach().clone()
    recycle(units[0], dead)
    zero_cols = (model[3].weight == 0).all(0)
    assert zero_cols.nonzero().flatten().tolist() == list(range(25, 50))
    assert torch.equal(model[3].weight[:, ~zero_cols], before[:, ~zero_cols])
    assert expand_to_inputs(dead, model[3]).sum() == 25


def test_redo_never_firing_equals_baseline():
    def train(with_redo):
        model, gen = mlp(3), torch.Generator().manual_seed(0)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        rem = ReDo(tau=0.1, every=10_000)
        rem.wrap_model(model)
        for step in range(20):
            x = torch.randn(16, 8, generator=gen)
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
            if with_redo:
                rem.after_step(model, opt, step, x)
        return [p.detach() for p in model.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(train(False), train(True)))


def test_schedule_window_and_options():
    rem = REMEDIES.get("redo").from_options(redo_tau="0.1", redo_every="100", redo_start=200, redo_end=500)
    fired = [s for s in range(1000) if rem.due(s)]
    assert fired == [200, 300, 400]
    with pytest.raises(ConfigError):
        ReDo(adam_step="sometimes")
    with pytest.raises(ConfigError):
        ReDo.from_options(redo_colour=1)


def test_dormant_fractions_on_tiny_bert():
    from inflora.models import tiny_model

    model = tiny_model("bert", layers=2, hidden=32, heads=4).train()
    ids = torch.randint(5, 1000, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 4:] = 0
    batches = [{"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 0])}]
    fr = dormant_fractions(model, batches, tau=0.5)
    assert len(fr) == 2 and all(0.0 <= f <= 1.0 for f in fr)
    assert dormant_fractions(model, batches, tau=0.0) == [0.0, 0.0]  # GELU is never exactly 0
    multi = dormant_fractions(model, batches, tau=(0.025, 0.5))
    assert multi[0.5] == fr
    assert model.training  # restored after scoring in eval mode
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    # padding tokens are excluded: changing them does not change the scores
    ids2 = ids.clone()
    ids2[0, 4:] = 7
    s1 = layer_scores(model, [{"input_ids": ids, "attention_mask": mask}])
    s2 = layer_scores(model, [{"input_ids": ids2, "attention_mask": mask}])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(s1, s2))
    # a recycle step runs on BERT FFN units with normal(0, initializer_range) re-init
    opt = torch.optim.AdamW(model.parameters())
    rem = ReDo(tau=0.5, every=1)
    rem.wrap_model(model)
    rem.after_step(model, opt, 0, batches[0])
    assert "redo.dormant_frac.block.0" in rem.metrics()


def test_stream_behaviour():
    """2 seeds, 12 tasks: plain training lets the dead share grow, ReDo keeps it near zero."""
    import redo_stream

    res = redo_stream.run(seeds=(0, 1))
    for r in res["runs"]["none"]:
        assert r["final_dead"] >= 0.4 and r["final_acc"] <= 0.6, r["final_dead"]
    for r in res["runs"]["redo-reset_tensor"]:
        assert r["final_dead"] <= 0.2 and r["final_acc"] >= 0.95, r["final_dead"]


def test_score_histogram_counts_every_unit():
    from inflora.remedies import score_histogram

    counts, edges = score_histogram(torch.tensor([0.0, 0.01, 0.9, 1.1, 5.0]), bins=4, max_score=2.0)
    assert counts.tolist() == [2.0, 1.0, 1.0, 1.0] and len(edges) == 5


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_recycling_decoder_ffn_units_keeps_the_output(family):
    """GPT-2 (Conv1D, weight [in, out]) and gated Llama FFNs: killed units are found through the
    architecture table, recycled (fresh incoming rows, zero outgoing columns), and the output is unchanged."""
    from inflora.models import tiny_model

    model = tiny_model(family, layers=2, hidden=32, heads=4)
    unit = find_units(model)[1]
    dead = torch.zeros(128 if family == "gpt2" else 64, dtype=torch.bool)
    dead[:16] = True
    with torch.no_grad():  # make 16 units dead: zero incoming rows (gate/up) and outgoing columns
        for layer in unit.incoming:
            w = layer.weight.T if family == "gpt2" else layer.weight
            w[dead] = 0
            if layer.bias is not None:
                layer.bias[dead] = 0
    batch = {"input_ids": torch.randint(5, 1000, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    scores = layer_scores(model, [batch])
    assert dormant_mask(scores[1], 0.0)[:16].all()
    with torch.no_grad():
        before = model(**batch).logits
        assert recycle(unit, dormant_mask(scores[1], 0.0)) >= 16
        after = model(**batch).logits
    torch.testing.assert_close(before, after)
    w_in = unit.incoming[0].weight.T if family == "gpt2" else unit.incoming[0].weight
    assert w_in[:16].abs().sum() > 0  # fresh incoming weights
