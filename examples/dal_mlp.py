"""DAL on a small MLP regression (other-methods.md, 4(b)).

Two-moons data (Delta = -0.1), 2->500->1 ReLU, loss 1/2 mean (yhat - y)^2, full-batch GD without
momentum. Static learning rates vs DAL (p = 1, finite-difference Hg): DAL should never increase the
loss where a static lr of 0.3 diverges, at the price of being slower than the best tuned lr.

    python examples/dal_mlp.py --out runs/examples/dal_mlp
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from two_moons_sd import make_data  # noqa: E402

from inflora.io import atomic_write_json  # noqa: E402
from inflora.remedies import DAL  # noqa: E402


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 500), nn.ReLU(), nn.Linear(500, 1)).double()


def _loss(model, x, y):
    return 0.5 * ((model(x)[:, 0] - y) ** 2).mean()


def static(seed: int, lr: float, steps: int, delta: float = -0.1) -> dict:
    x, y = make_data(seed, delta)
    model = _model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        opt.step()
        with torch.no_grad():
            losses.append(float(_loss(model, x, y)))
        if not math.isfinite(losses[-1]) or losses[-1] > 1e12:
            break
    return {"losses": losses, "final_loss": losses[-1], "diverged": not losses[-1] < 1e3}


def dal(seed: int, steps: int, p: float = 1.0, delta: float = -0.1, hvp: str = "fd") -> dict:
    x, y = make_data(seed, delta)
    model = _model(seed)
    opt = DAL(model.parameters(), p=p, hvp=hvp)
    losses = [float(_loss(model, x, y).detach())]
    for _ in range(steps):
        opt.step(lambda: _loss(model, x, y))
        with torch.no_grad():
            losses.append(float(_loss(model, x, y)))
    lrs = [h["lr"] for h in opt.history]
    inc = max(b - a for a, b in zip(losses, losses[1:]))
    return {
        "losses": losses[1:],
        "final_loss": losses[-1],
        "lrs": lrs,
        "lr_median": float(np.median(lrs)),
        "max_loss_increase": inc,
        "overhead": opt.metrics()["drift.overhead"],
    }


def run(seeds=(0, 1), steps: int = 1000, lrs=(0.1, 0.3)) -> dict:
    torch.set_num_threads(1)
    out = {}
    for seed in seeds:
        for lr in lrs:
            out[f"static_{lr}_seed{seed}"] = static(seed, lr, steps)
        out[f"dal_p1_seed{seed}"] = dal(seed, steps)
    return out


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in res.items():
        a1.semilogy([min(v, 1e6) for v in r["losses"]], label=name)
        if "lrs" in r:
            a2.plot(r["lrs"], label=name)
    a1.set(xlabel="step", ylabel="loss")
    a2.set(xlabel="step", ylabel="DAL learning rate")
    a1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/examples/dal_mlp")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1000)
    a = ap.parse_args(argv)
    t0 = time.time()
    res = run(tuple(range(a.seeds)), a.steps)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(res, out / "dal_mlp.png")
    summary = {
        k: {kk: v[kk] for kk in ("final_loss", "diverged", "lr_median", "max_loss_increase", "overhead") if kk in v}
        for k, v in res.items()
    }
    atomic_write_json(out / "dal_mlp.json", {"summary": summary, "runs": res, "seconds": time.time() - t0})
    for k, v in summary.items():
        print(k, {kk: (round(vv, 5) if isinstance(vv, float) else vv) for kk, vv in v.items()})
    return res


if __name__ == "__main__":
    main()
