"""Grokfast filters and SPAM: closed forms, neutral settings, resets, clipping, spike recovery."""

import math

import pytest
import torch
from torch import nn

from inflora.errors import ConfigError
from inflora.remedies import (
    REMEDIES,
    SPAM,
    GrokTracker,
    Grokfast,
    generalization_gap,
    gradfilter_ema,
    gradfilter_ma,
    spike_stats,
    steps_to_threshold,
    warmup_scale,
)


def _grads(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(3, generator=gen, dtype=torch.float64) for _ in range(n)]


def _feed(fn, grads, **kw):
    p = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    model = nn.Module()
    model.p = p
    state, out = None, []
    for g in grads:
        p.grad = g.clone()
        state = fn(model, state, **kw)
        out.append(p.grad.clone())
    return out, state


def test_ema_matches_closed_form():
    gs, alpha, lamb = _grads(12), 0.9, 2.0
    out, state = _feed(gradfilter_ema, gs, alpha=alpha, lamb=lamb)
    for t in range(12):
        mu = alpha**t * gs[0] + sum((1 - alpha) * alpha ** (t - s) * gs[s] for s in range(1, t + 1))
        assert torch.allclose(out[t], gs[t] + lamb * mu, atol=1e-12)
    assert torch.allclose(state["p"], mu, atol=1e-12)


def test_lambda_zero_is_identity_and_ma_waits_for_full_window():
    gs = _grads(8, 1)
    for fn, kw in ((gradfilter_ema, dict(alpha=0.98, lamb=0.0)), (gradfilter_ma, dict(window_size=3, lamb=0.0))):
        out, _ = _feed(fn, gs, **kw)
        assert all(torch.equal(a, b) for a, b in zip(out, gs))
    out, _ = _feed(gradfilter_ma, gs, window_size=3, lamb=5.0)
    assert torch.equal(out[0], gs[0]) and torch.equal(out[1], gs[1])
    for t in range(2, 8):
        assert torch.allclose(out[t], gs[t] + 5.0 * sum(gs[t - 2 : t + 1]) / 3, atol=1e-12)


def test_filter_runs_between_backward_and_step():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    ref = nn.Linear(4, 1)
    ref.load_state_dict(model.state_dict())
    rem = REMEDIES.get("grokfast").from_options(grokfast_alpha=0.5, grokfast_lamb=3.0)
    opt, opt_ref = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(ref.parameters(), lr=0.1)
    mu = None
    for step in range(4):
        x = torch.randn(8, 4)
        for m, o in ((model, opt), (ref, opt_ref)):
            o.zero_grad()
            m(x).pow(2).mean().backward()
        rem.after_backward(model, step)  # the trainer's hook
        with torch.no_grad():
            g = [p.grad.clone() for p in ref.parameters()]
            mu = g if mu is None else [0.5 * a + 0.5 * b for a, b in zip(mu, g)]
            for p, gi, mi in zip(ref.parameters(), g, mu):
                p.grad = gi + 3.0 * mi
        opt.step()
        opt_ref.step()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(model.parameters(), ref.parameters()))
    assert "grok.mu_ratio" in rem.metrics()
    state = rem.state_dict()
    fresh = Grokfast(alpha=0.5, lamb=3.0)
    fresh.load_state_dict(state)
    assert all(torch.equal(fresh.grads[k], v) for k, v in rem.grads.items())
    with pytest.raises(ConfigError):
        Grokfast(mode="median")


def test_grok_diagnostics():
    assert generalization_gap(1.0, 0.4) == pytest.approx(0.6)
    assert steps_to_threshold([10, 20, 30, 40], [0.5, 0.94, 0.96, 0.99]) == 30
    assert steps_to_threshold([10], [0.5]) is None
    tr = GrokTracker()
    for s, v in ((100, 0.3), (200, 0.97), (300, 0.99)):
        tr.update(s, 1.0, v)
    assert tr.compute() == {"grok.gap": pytest.approx(0.01), "grok.steps_to_95": 200.0}


# ---------------------------------------------------------------- SPAM
def _regression(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)), torch.randn(32, 5), torch.randn(32, 1)


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_neutral_spam_is_adamw_bit_for_bit(wd):
    m1, x, y = _regression()
    m2, _, _ = _regression()
    a = torch.optim.AdamW(m1.parameters(), lr=1e-2, eps=1e-6, weight_decay=wd, foreach=False)
    s = SPAM(m2.parameters(), lr=1e-2, eps=1e-6, weight_decay=wd, theta=0.0, delta_t=None)
    for _ in range(30):
        for m, o in ((m1, a), (m2, s)):
            o.zero_grad()
            ((m(x) - y) ** 2).mean().backward()
            o.step()
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))


def test_warmup_scale_endpoints():
    assert warmup_scale(0, 150) == pytest.approx(0.01)
    assert warmup_scale(150, 150) == 1.0 and warmup_scale(400, 150) == 1.0
    vals = [warmup_scale(k, 150) for k in range(151)]
    assert all(b >= a for a, b in zip(vals, vals[1:]))


def test_resets_keep_step_count_and_start_the_ramp():
    p = nn.Parameter(torch.ones(4))
    opt = SPAM([p], lr=1e-3, theta=0.0, delta_t=5, warmup=3)
    scales, m_after = [], []
    for t in range(12):
        p.grad = torch.full((4,), 0.1 * (t + 1))
        opt.step()
        scales.append(opt.last_stats["spam.scale"])
        m_after.append(opt.state[p]["exp_avg"].clone())
    # resets at t+1 = 5 and 10 (0-based t = 4, 9): m holds only that step's gradient afterwards
    for t in (4, 9):
        assert torch.allclose(m_after[t], 0.1 * 0.1 * (t + 1) * torch.ones(4))
    assert float(opt.state[p]["step"]) == 12.0
    assert scales[:4] == [1.0] * 4
    assert scales[4] == pytest.approx(0.01) and scales[7] == 1.0 and scales[9] == pytest.approx(0.01)


def _spiky_state(theta=100.0, delta_t=None, grace=20, steps=25):
    p = nn.Parameter(torch.zeros(3))
    opt = SPAM([p], lr=1e-3, theta=theta, delta_t=delta_t, grace=grace)
    for _ in range(steps):
        p.grad = torch.tensor([1.0, -1.0, 1.0])
        opt.step()
    return p, opt


def test_clipping_is_exact_and_uses_previous_v():
    p, opt = _spiky_state()
    v_prev = opt.state[p]["exp_avg_sq"].clone()
    m_prev = opt.state[p]["exp_avg"].clone()
    g = torch.tensor([1000.0, -1000.0, 2.0])
    stats = spike_stats(g, v_prev, 100.0)
    p.grad = g.clone()
    opt.step()
    clipped = torch.where(g**2 > 100.0 * v_prev, g.sign() * (100.0 * v_prev).sqrt(), g)
    assert torch.allclose(opt.state[p]["exp_avg"], 0.9 * m_prev + 0.1 * clipped, atol=1e-6)
    assert torch.allclose(opt.state[p]["exp_avg_sq"], 0.999 * v_prev + 0.001 * clipped**2, atol=1e-6)
    slow_frac = sum(float(g[i]) ** 2 > 100.0 * float(v_prev[i]) for i in range(3)) / 3
    assert stats["spike.frac"] == pytest.approx(slow_frac, abs=1e-5)
    assert stats["spike.max_ratio"] == pytest.approx(
        max(float(g[i]) ** 2 / float(v_prev[i]) for i in range(3)), rel=1e-5
    )


def test_grace_period_after_start_and_after_reset():
    p, opt = _spiky_state(steps=10)  # t+1 = 11 < 20: no clipping yet
    m_prev, g = opt.state[p]["exp_avg"].clone(), torch.tensor([1000.0, 0.0, 0.0])
    p.grad = g.clone()
    opt.step()
    assert torch.allclose(opt.state[p]["exp_avg"], 0.9 * m_prev + 0.1 * g, atol=1e-5)
    # with delta_t = 30, steps t+1 = 30..49 are inside the post-reset grace; t+1 = 50 clips again
    p, opt = _spiky_state(delta_t=30, steps=35)
    m_prev = opt.state[p]["exp_avg"].clone()
    p.grad = g.clone()
    opt.step()  # t+1 = 36, 36 % 30 = 6 < 20
    assert torch.allclose(opt.state[p]["exp_avg"], 0.9 * m_prev + 0.1 * g, atol=1e-5)


def test_spike_recovery_beats_adam():
    """A 1000x spike at step 100 of a regression: Adam's v stays inflated for ~1/(1-beta2) steps and
    learning stalls; SPAM clips the spike to sqrt(theta) ~ 71x the running RMS and keeps converging."""

    def run(opt_cls, spike=1000.0, **kw):
        torch.manual_seed(0)
        w_true = torch.randn(10, 1)
        x = torch.randn(256, 10)
        y = x @ w_true
        model = nn.Linear(10, 1, bias=False)
        opt = opt_cls(model.parameters(), lr=1e-2, **kw)
        losses, ratio = [], None
        for t in range(600):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            if t == 100:
                model.weight.grad.mul_(spike)
                v_prev = opt.state[model.weight]["exp_avg_sq"].clone()
                m_prev = opt.state[model.weight]["exp_avg"].clone()
            opt.step()
            if t == 100:
                applied = (opt.state[model.weight]["exp_avg"] - 0.9 * m_prev) / 0.1
                ratio = float((applied.abs() / v_prev.sqrt()).max())
            with torch.no_grad():
                losses.append(float(((model(x) - y) ** 2).mean()))
        return losses, ratio

    adam, adam_ratio = run(torch.optim.Adam, eps=1e-6)
    spam, spam_ratio = run(SPAM, delta_t=None, theta=5000.0, eps=1e-6)
    clean, _ = run(torch.optim.Adam, spike=1.0, eps=1e-6)
    assert spam_ratio == pytest.approx(math.sqrt(5000.0), rel=1e-3) and adam_ratio > 100
    assert spam[300] < adam[300] / 3
    assert spam[-1] < 0.1 < 1.0 < adam[-1]
    assert clean[-1] < spam[-1]  # clipping helps, it does not make the spike free


def test_spam_remedy_options_and_optimizer_factory():
    rem = REMEDIES.get("spam").from_options(spam_theta="1000", spam_delta_t=50)
    p = nn.Parameter(torch.ones(2))
    opt = rem.make_optimizer([p], lr=1e-3)
    assert isinstance(opt, SPAM) and opt.theta == 1000.0 and opt.delta_t == 50
    model = nn.Linear(3, 1)
    adam = torch.optim.Adam(model.parameters())
    for step in range(2):
        adam.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        rem.after_backward(model, step)
        adam.step()
        rem.after_step(model, adam, step, None)
    assert set(rem.metrics()) == {"spike.frac", "spike.max_ratio"}
    sd = opt.state_dict()
    opt2 = rem.make_optimizer([p], lr=1e-3)
    opt2.load_state_dict(sd)
    assert opt2.total_step == opt.total_step
    with pytest.raises(ConfigError):
        SPAM([p], theta=-1)
    assert math.isfinite(warmup_scale(3, 5))
