"""Spectral decoupling on two-moons (other-methods.md, Appendix A).

ERM (logistic loss) vs SD (+ lambda * mean yhat^2) on a 2->500->1 ReLU MLP, full-batch SGD with
momentum. Measures the minimum margin, how far the boundary bends away from x1 = 0, the saturated
share, and the NTK feature-response ratio R.

    python examples/two_moons_sd.py --out runs/examples/two_moons_sd
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from inflora.io import atomic_write_json
from inflora.remedies import boundary_margin, feature_responses, ntk_modes, response_ratio, sd_binary_loss


def make_data(seed: int, delta: float = 0.1, n: int = 300):
    from sklearn.datasets import make_moons

    x, y = make_moons(n, noise=0.1, random_state=seed)
    ys = 2.0 * y - 1.0
    x = x - np.stack([np.full(n, 0.5), 0.3 * ys], 1)
    x[:, 1] -= x[:, 1].mean()
    x[:, 1] *= np.sign(-x[:, 1] * ys)
    x[:, 1] -= ys * delta
    x = x[:, ::-1].copy()
    return torch.tensor(x), torch.tensor(ys)


def jacobian(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Analytic output Jacobian of 2->H->1 ReLU w.r.t. (W1, b1, w2, b2): n x (3H + 1)."""
    l1, l2 = model[0], model[2]
    pre = x @ l1.weight.T + l1.bias
    act = (pre > 0).to(x.dtype) * l2.weight[0]
    dw1 = (act.unsqueeze(2) * x.unsqueeze(1)).reshape(len(x), -1)
    return torch.cat([dw1, act, pre.clamp_min(0), torch.ones(len(x), 1, dtype=x.dtype)], 1).detach()


def train(x, y, lam: float, epochs: int, seed: int, width: int = 500, checkpoints=()):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, 1)).double()
    modes = ntk_modes(jacobian(model, x))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    z_at = {}
    for epoch in range(1, epochs + 1):
        opt.zero_grad()
        loss = sd_binary_loss(model(x)[:, 0], y, lam)
        loss.backward()
        opt.step()
        if epoch in checkpoints:
            with torch.no_grad():
                z_at[epoch] = feature_responses(model(x)[:, 0], modes)
    return model, modes, z_at


def measure(model, modes, x, y) -> dict:
    with torch.no_grad():
        f = model(x)[:, 0]
    w = torch.sigmoid(-y * f)
    z = feature_responses(f, modes)
    margin, abs_x1 = boundary_margin(lambda p: model(p)[:, 0], x)
    return {
        "train_acc": float((torch.sign(f) == y).double().mean()),
        "min_margin": margin,
        "boundary_abs_x1": abs_x1,
        "saturated_share": float((w < 0.01).double().mean()),
        "median_grad_weight": float(w.median()),
        "mean_logit_sq": float((f**2).mean()),
        "z1": float(z[1]),
        "R": response_ratio(z),
    }


def run(seeds=(0, 1, 2), delta: float = 0.1, epochs: int = 1000, lam: float = 0.003, keep_models: bool = False) -> dict:
    torch.set_num_threads(1)  # a 300 x 500 MLP: one thread is faster on a small CPU box
    runs, models = {"erm": [], "sd": []}, {}
    for seed in seeds:
        x, y = make_data(seed, delta)
        for name, l in (("erm", 0.0), ("sd", lam)):
            model, modes, _ = train(x, y, l, epochs, seed)
            runs[name].append({"seed": seed, **measure(model, modes, x, y)})
            if keep_models:
                models[(name, seed)] = (model, x, y)
    summary = {}
    for name, rows in runs.items():
        for key in rows[0]:
            if key != "seed":
                vals = np.array([r[key] for r in rows])
                summary[f"{name}.{key}.mean"] = float(vals.mean())
                summary[f"{name}.{key}.sd"] = float(vals.std())
    summary["margin_ratio"] = summary["sd.min_margin.mean"] / summary["erm.min_margin.mean"]
    summary["abs_x1_ratio"] = summary["sd.boundary_abs_x1.mean"] / summary["erm.boundary_abs_x1.mean"]
    summary["R_ratio_min"] = min(s["R"] / e["R"] for s, e in zip(runs["sd"], runs["erm"]))
    summary["saturated_gap"] = summary["erm.saturated_share.mean"] - summary["sd.saturated_share.mean"]
    out = {
        "config": {"seeds": list(seeds), "delta": delta, "epochs": epochs, "lam": lam},
        "runs": runs,
        "summary": summary,
    }
    if keep_models:
        out["models"] = models
    return out


def long_run_z1(seed: int = 0, delta: float = 0.1, lam: float = 0.003, epochs=(1000, 10000)) -> dict:
    """z1 growth from epoch 1 000 to 10 000 (opt-in slow check)."""
    x, y = make_data(seed, delta)
    out = {}
    for name, l in (("erm", 0.0), ("sd", lam)):
        _, _, z = train(x, y, l, max(epochs), seed, checkpoints=epochs)
        out[name] = float(z[epochs[1]][1] / z[epochs[0]][1] - 1.0)
    return out


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seed = res["config"]["seeds"][0]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    g = np.linspace(-2, 2, 200)
    xx, yy = np.meshgrid(g, g)
    for ax, name in zip(axes, ("erm", "sd")):
        model, x, y = res["models"][(name, seed)]
        with torch.no_grad():
            f = model(torch.tensor(np.stack([xx.ravel(), yy.ravel()], 1))).reshape(200, 200).numpy()
        ax.contourf(xx, yy, np.sign(f), levels=[-2, 0, 2], colors=["#f4c7c3", "#c6dbef"], alpha=0.6)
        ax.contour(xx, yy, f, levels=[0], colors="k")
        ax.scatter(x[:, 0], x[:, 1], c=y, cmap="coolwarm", s=8)
        r = res["runs"][name][0]
        ax.set_title(f"{name.upper()}: margin {r['min_margin']:.3f}, |x1| {r['boundary_abs_x1']:.3f}, R {r['R']:.3f}")
        ax.set_xlim(-2, 2)
        ax.set_ylim(-2, 2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/examples/two_moons_sd")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--lam", type=float, default=0.003)
    ap.add_argument("--long", action="store_true", help="also measure z1 growth from epoch 1 000 to 10 000 (seed 0)")
    a = ap.parse_args(argv)
    t0 = time.time()
    res = run(tuple(range(a.seeds)), a.delta, a.epochs, a.lam, keep_models=True)
    if a.long:
        res["z1_growth_1k_to_10k"] = long_run_z1(0, a.delta, a.lam)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(res, out / "two_moons_sd.png")
    res.pop("models")
    res["seconds"] = time.time() - t0
    atomic_write_json(out / "two_moons_sd.json", res)
    for k, v in res["summary"].items():
        print(f"{k:32s} {v:.4f}")
    return res


if __name__ == "__main__":
    main()
