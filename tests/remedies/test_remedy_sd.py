"""Spectral decoupling: penalty values/gradients, diagnostics vs slow references, two-moons behaviour."""

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from inflora.errors import ConfigError
from inflora.remedies import (
    REMEDIES,
    SpectralDecoupling,
    StarvationMeter,
    feature_responses,
    grad_weights,
    logit_sq,
    ntk_modes,
    response_ratio,
    saturated_fraction,
    sd_binary_loss,
    sd_cross_entropy,
    sd_penalty,
    group_gap,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))


def test_binary_loss_value_and_gradient_match_formula():
    torch.manual_seed(0)
    yhat = torch.randn(17, dtype=torch.float64, requires_grad=True) * 3
    yhat.retain_grad()
    y = torch.randint(0, 2, (17,))
    lam = 0.003
    loss = sd_binary_loss(yhat, y, lam)
    ys = (2 * y - 1).double()
    yd = yhat.detach()
    ref = (
        sum(math.log1p(math.exp(-float(ys[i] * yd[i]))) for i in range(17)) / 17
        + lam * sum(float(v) ** 2 for v in yd) / 17
    )
    assert abs(float(loss.detach()) - ref) < 1e-10
    loss.backward()
    expected = (-ys * torch.sigmoid(-ys * yhat.detach()) + 2 * lam * yhat.detach()) / 17
    assert torch.allclose(yhat.grad, expected, atol=1e-12)


def test_multiclass_penalty_excludes_ignored_rows_and_matches_loop():
    torch.manual_seed(1)
    z = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 3, -100, 4, -100, 1])
    lam = 0.1
    pen = sd_penalty(z, y, lam)
    rows = [i for i in range(6) if y[i] != -100]
    ref = lam * sum(float(z.detach()[i, c]) ** 2 for i in rows for c in range(5)) / (len(rows) * 5)
    assert abs(float(pen.detach()) - ref) < 1e-12
    total = sd_cross_entropy(z, y, lam)
    total.backward()
    keep = torch.tensor(rows)
    zk = z.detach()[keep]
    g = torch.zeros_like(z)
    g[keep] = (zk.softmax(-1) - F.one_hot(y[keep], 5).double()) / len(rows) + 2 * lam * zk / (len(rows) * 5)
    assert torch.allclose(z.grad, g, atol=1e-12)


def test_per_class_targets_value_gradient_and_absent_class():
    yhat = torch.tensor([0.5, 3.0, -1.0, 2.0, 0.1], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 0, 1, -100])
    lam, g0, g1 = 0.1, 0.44, 2.5
    pen = sd_penalty(yhat, y, lam, targets=[g0, g1])
    ref = lam * (((0.5 - g0) ** 2 + (-1 - g0) ** 2) / 2) + lam * (((3 - g1) ** 2 + (2 - g1) ** 2) / 2)
    assert abs(float(pen.detach()) - ref) < 1e-12
    pen.backward()
    exp = torch.tensor(
        [2 * lam * (0.5 - g0) / 2, 2 * lam * (3 - g1) / 2, 2 * lam * (-1 - g0) / 2, 2 * lam * (2 - g1) / 2, 0.0],
        dtype=torch.float64,
    )
    assert torch.allclose(yhat.grad, exp, atol=1e-12)
    # a class absent from the batch adds 0, never NaN; an all-ignored batch gives 0 with a graph
    only0 = sd_penalty(yhat[:1], y[:1], lam, targets=[g0, g1, 9.0])
    assert torch.isfinite(only0) and abs(float(only0.detach()) - lam * (0.5 - g0) ** 2) < 1e-12
    none = sd_penalty(yhat, torch.full((5,), -100), lam, targets=[g0, g1])
    assert float(none.detach()) == 0.0 and none.requires_grad


def test_two_logit_targets_use_the_margin():
    z = torch.tensor([[0.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
    pen = sd_penalty(z, torch.tensor([1, 0]), 1.0, targets=[0.0, 2.0])
    assert abs(float(pen.detach()) - ((1 - 2) ** 2 + (-2 - 0) ** 2)) < 1e-12


def test_penalty_in_fp32_for_half_logits():
    z = torch.full((4, 2), 300.0, dtype=torch.float16)  # 300^2 overflows fp16
    pen = sd_penalty(z, torch.tensor([0, 1, 0, 1]), 1.0)
    assert pen.dtype == torch.float32 and abs(float(pen.detach()) - 90000.0) < 1e-3


def test_neutral_lambda_zero_returns_the_baseline_loss():
    z = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 1])
    base = F.cross_entropy(z, y)
    assert SpectralDecoupling(0.0).loss(z, y, base) is base
    out = SpectralDecoupling(0.5).loss(z, y, base)
    assert torch.allclose(out, base + 0.5 * (z.float() ** 2).mean())


def test_from_options_and_registry():
    rem = REMEDIES.get("spectral-decoupling").from_options(**{"sd-lambda": "0.2", "sd_targets": "0.44,2.5"})
    assert rem.lam == 0.2 and rem.targets == [0.44, 2.5]
    with pytest.raises(ConfigError):
        SpectralDecoupling.from_options(sd_lambda=-1)
    with pytest.raises(ConfigError):
        SpectralDecoupling.from_options(sd_targets="a,b")


def _slow_weights(z, y):
    out = []
    for i in range(len(y)):
        if y[i] == -100:
            continue
        if z.shape[1] == 1:
            s = 1.0 if y[i] > 0 else -1.0
            out.append(1 / (1 + math.exp(s * float(z[i, 0]))))
        else:
            e = [math.exp(float(v)) for v in z[i]]
            out.append(1 - e[int(y[i])] / sum(e))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("classes", [1, 4])
def test_diagnostics_match_slow_reference(classes):
    torch.manual_seed(2)
    z = torch.randn(40, classes, dtype=torch.float64) * 6
    y = torch.randint(0, max(classes, 2), (40,))
    y[::7] = -100
    w_ref = _slow_weights(z, y)
    assert torch.allclose(grad_weights(z, y), w_ref, atol=1e-5)
    assert abs(saturated_fraction(z, y) - float((w_ref < 0.01).double().mean())) <= 1e-5
    valid = z[y != -100]
    assert abs(logit_sq(z, y) - float((valid**2).mean())) <= 1e-5
    meter = StarvationMeter()
    for chunk in range(0, 40, 9):
        meter.update(z[chunk : chunk + 9], y[chunk : chunk + 9])
    m = meter.compute()
    assert abs(m["starvation.saturated_frac"] - float((w_ref < 0.01).double().mean())) <= 1e-5
    assert abs(m["starvation.grad_weight_p50"] - float(w_ref.quantile(0.5))) <= 1e-5
    assert abs(m["starvation.logit_sq"] - float((valid**2).mean())) <= 1e-5


def test_remedy_metrics_and_group_gap():
    rem = SpectralDecoupling(0.1)
    z = torch.tensor([[10.0, -10.0], [0.0, 0.0]])
    rem.loss(z, torch.tensor([0, 1]), torch.tensor(0.0))
    m = rem.metrics()
    assert m["starvation.saturated_frac"] == 0.5 and "starvation.grad_weight_p90" in m
    correct = torch.tensor([1, 1, 0, 1, 0, 0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    assert abs(group_gap(correct, groups) - (0.5 - 1 / 3)) < 1e-12


def test_ntk_modes_and_ratio():
    torch.manual_seed(3)
    j = torch.randn(30, 50, dtype=torch.float64)
    u = ntk_modes(j)
    ev = torch.linalg.eigvalsh(j @ j.T).flip(0)
    assert torch.allclose(torch.diag(u.T @ (j @ j.T) @ u), ev, rtol=1e-8)
    yhat = u[:, 0] * 3 + u[:, 5] * 0.5
    z = feature_responses(yhat, u)
    assert abs(float(z[0]) - 3) < 1e-9 and abs(float(z[5]) - 0.5) < 1e-9
    assert abs(response_ratio(z) - 0.5 / 3) < 1e-9


def test_two_moons_behaviour():
    """Delta = +0.1, 1 000 epochs, 3 seeds: SD doubles the margin and bends the boundary."""
    import two_moons_sd

    torch.set_num_threads(1)
    res = two_moons_sd.run(seeds=(0, 1, 2), delta=0.1, epochs=1000, lam=0.003)
    s = res["summary"]
    assert s["erm.train_acc.mean"] >= 0.99 and s["sd.train_acc.mean"] >= 0.99
    assert s["margin_ratio"] >= 1.5, s
    assert s["abs_x1_ratio"] >= 2.0, s
    assert s["R_ratio_min"] >= 4.0, s
    assert s["saturated_gap"] >= 0.5, s


@pytest.mark.slow
def test_two_moons_long_run_z1():
    import two_moons_sd

    g = two_moons_sd.long_run_z1(seed=0)
    assert g["erm"] >= 0.15 and abs(g["sd"]) <= 0.10, g


def test_boundary_margin_on_a_known_line():
    from inflora.remedies import boundary_margin

    torch.manual_seed(4)
    x = torch.rand(50, 2, dtype=torch.float64) * 2 - 1
    margin, abs_x1 = boundary_margin(lambda p: p[:, 0] - 0.3, x)
    assert abs(abs_x1 - 0.3) < 1e-9
    true = float((x[:, 0] - 0.3).abs().min())
    assert true - 1e-9 <= margin <= true + 0.006  # boundary sampled every 4/399 along x2
