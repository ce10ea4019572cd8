"""DAL: the deterministic quadratic table, HVP agreement, neutral/invariance/window tests, MLP stability."""

import math
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from inflora.errors import ConfigError
from inflora.remedies import DAL, REMEDIES, curvature_along_gradient, dal_lr, hvp_exact, lambda_max

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import dal_quadratic  # noqa: E402


def _sig(x, digits=2):
    return float(f"{x:.{digits - 1}e}")


def test_quadratic_table():
    res = dal_quadratic.run(200)
    # GD on a diagonal quadratic has a closed form: theta_i(t) = (1 - 2 h d_i)^t theta_i(0)
    for lr in (0.5, 0.9, 1.05):
        closed = sum(d * ((1 - 2 * lr * d) ** 200 * t0) ** 2 for d, t0 in zip((1.0, 0.01), dal_quadratic.THETA0))
        assert res[f"gd_{lr}"]["final_loss"] == pytest.approx(closed, rel=1e-3)
    assert _sig(res["gd_0.5"]["final_loss"]) == 7.2e-6
    assert _sig(res["gd_0.9"]["final_loss"]) == 2.8e-7
    assert _sig(res["gd_1.05"]["final_loss"], 1) == 4e15
    p1 = res["dal_p1"]
    assert p1["final_loss"] == pytest.approx(0.1227, rel=1e-3)
    assert max(abs(v - 1.0) for v in p1["lrs"]) <= 2e-5
    p05 = res["dal_p0.5"]
    assert p05["first_step_over_1e20"] == 39 and p05["lr_median"] == pytest.approx(math.sqrt(2), rel=1e-3)
    p2 = res["dal_p2"]
    assert _sig(p2["final_loss"]) == 8.5e-14
    assert p2["lr_first"] == pytest.approx(0.5, rel=1e-3) and p2["lr_median"] == pytest.approx(2.04, rel=5e-3)
    assert p2["lr_max"] == 5.0


def test_fd_hvp_matches_exact():
    theta = torch.tensor([-0.35, -0.2], dtype=torch.float64, requires_grad=True)
    loss_fn = lambda: dal_quadratic.loss_of(theta)  # noqa: E731
    v_e, _, g, hg_e = curvature_along_gradient(loss_fn, [theta], "exact")
    v_f, _, _, hg_f = curvature_along_gradient(loss_fn, [theta], "fd")
    assert torch.allclose(hg_e[0], hg_f[0], rtol=1e-6) and v_e == pytest.approx(v_f, rel=1e-6)
    assert torch.allclose(hg_e[0], torch.tensor([2.0, 0.02], dtype=torch.float64) * g[0])
    # small MLP (smooth activation): within 1e-2 relative
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    x, y = torch.randn(20, 3, dtype=torch.float64), torch.randn(20, dtype=torch.float64)
    loss_fn = lambda: ((model(x)[:, 0] - y) ** 2).mean()  # noqa: E731
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    v_e, _, _, hg_e = curvature_along_gradient(loss_fn, params, "exact")
    v_f, _, _, hg_f = curvature_along_gradient(loss_fn, params, "fd")
    num = math.sqrt(sum(float(((a - b) ** 2).sum()) for a, b in zip(hg_e, hg_f)))
    den = math.sqrt(sum(float((a**2).sum()) for a in hg_e))
    assert num / den <= 1e-2 and v_f == pytest.approx(v_e, rel=1e-2)
    assert all(torch.equal(p, b) for p, b in zip(params, before))  # parameters restored exactly
    _, _, hv = hvp_exact(loss_fn, params, [torch.ones_like(p) for p in params])
    assert len(hv) == len(params)
    assert lambda_max(lambda: dal_quadratic.loss_of(theta), [theta], iters=30) == pytest.approx(2.0, rel=1e-3)


def _mlp_problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 1))
    x, y = torch.randn(40, 2), torch.randn(40)
    return model, x, y


def test_p_zero_is_bit_identical_to_sgd():
    m1, x, y = _mlp_problem()
    m2, _, _ = _mlp_problem()
    sgd = torch.optim.SGD(m1.parameters(), lr=2.0)  # p = 0: eta = min(2 / v^0, lr_max) = 2
    dal = DAL(m2.parameters(), p=0.0, lr_max=5.0, hvp="fd")
    for _ in range(5):
        sgd.zero_grad()
        ((m1(x)[:, 0] - y) ** 2).mean().backward()
        sgd.step()
        dal.step(lambda: ((m2(x)[:, 0] - y) ** 2).mean())
        assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))


def test_p_one_is_invariant_to_loss_scale():
    runs = []
    for scale in (1.0, 10.0):
        theta = torch.tensor([-0.35, -0.2], dtype=torch.float64, requires_grad=True)
        opt = DAL([theta], p=1.0, lr_max=5.0, hvp="exact")
        traj = []
        for _ in range(30):
            opt.step(lambda theta=theta, scale=scale: dal_quadratic.loss_of(theta, scale))
            traj.append(theta.detach().clone())
        runs.append(torch.stack(traj))
        assert max(h["lr"] for h in opt.history) < 5.0  # below the cap
    assert torch.allclose(runs[0], runs[1], rtol=1e-9, atol=1e-12)


def test_window_every_k_and_zero_curvature():
    theta = torch.tensor([-0.35, -0.2], dtype=torch.float64, requires_grad=True)
    opt = DAL([theta], lr=0.123, p=1.0, hvp="exact", start=2, stop=5)
    for _ in range(8):
        opt.step(lambda: dal_quadratic.loss_of(theta))
    lrs = [h["lr"] for h in opt.history]
    assert lrs[:3] == [0.123] * 3 and lrs[5:] == [0.123] * 3
    assert all(abs(v - 1.0) < 1e-3 for v in lrs[3:5])
    assert dal_lr(0.0) == 5.0 and dal_lr(0.0, lr_max=3.0) == 3.0 and dal_lr(4.0, p=1.0) == 0.5
    w = torch.ones(3, requires_grad=True)
    flat = DAL([w], p=1.0, lr_max=5.0, hvp="exact")
    flat.step(lambda: w.sum())  # linear loss: Hg = 0
    assert flat.history[-1]["lr"] == 5.0
    theta2 = torch.tensor([-0.35, -0.2], dtype=torch.float64, requires_grad=True)
    every = DAL([theta2], p=1.0, hvp="fd", every_k=3)
    for _ in range(6):
        every.step(lambda: dal_quadratic.loss_of(theta2))
    lrs = [h["lr"] for h in every.history]
    assert lrs[0] == lrs[1] == lrs[2] and lrs[3] == lrs[4] == lrs[5]
    m = every.metrics()
    assert m["drift.hv"] == pytest.approx(m["drift.lr"] * m["drift.v"]) and m["drift.overhead"] >= 1.0
    with pytest.raises(ConfigError):
        DAL([theta2], hvp="magic")


def test_mlp_regression_dal_never_increases_where_static_diverges():
    import dal_mlp

    steps = 150
    assert dal_mlp.static(0, 0.3, steps)["diverged"]
    r = dal_mlp.dal(0, steps)
    assert r["max_loss_increase"] <= 0.0 and r["final_loss"] < r["losses"][0]
    assert 0.01 < r["lr_median"] < 0.2


def test_dal_remedy_sets_the_optimizer_lr():
    from inflora.models import tiny_model

    model = tiny_model("bert", layers=1, hidden=16, heads=2).train()
    rem = REMEDIES.get("dal").from_options(dal_p=1.0, dal_lr_max=5.0)
    rem.wrap_model(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = {"input_ids": torch.randint(5, 500, (4, 6)), "labels": torch.tensor([0, 1, 1, 0])}
    before = [p.detach().clone() for p in model.parameters()]
    for step in range(3):
        opt.zero_grad()
        model(**batch).loss.backward()
        rem.after_backward(model, step)
        opt.step()
        if step == 0:  # measure-only first step (the remedy has not met the optimizer yet)
            assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            rem.after_step(model, opt, step, batch)
    m = rem.metrics()
    assert opt.param_groups[0]["lr"] == pytest.approx(m["drift.lr"]) and m["drift.v"] > 0
    assert m["drift.hv"] == pytest.approx(min(2.0, 5.0 * m["drift.v"]))
    with pytest.warns(UserWarning, match="plain SGD"):
        DAL_rem = REMEDIES.get("dal")()
        DAL_rem.after_step(model, torch.optim.Adam(model.parameters()), 0, batch)
