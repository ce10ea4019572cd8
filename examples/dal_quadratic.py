"""DAL on the quadratic E = theta^T diag(1, 0.01) theta (other-methods.md, 4(a)); deterministic.

2/lambda_max = 1. GD at 0.5 and 0.9 converges, at 1.05 diverges; DAL with p = 1 sits exactly at
the edge (lr = 1, the top mode flips sign, loss plateaus at ~0.12); p = 0.5 diverges; p = 2 converges.

    python examples/dal_quadratic.py --out runs/examples/dal_quadratic
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from inflora.io import atomic_write_json
from inflora.remedies import DAL

DIAG = torch.tensor([1.0, 0.01], dtype=torch.float64)
THETA0 = (-0.35, -0.2)


def loss_of(theta: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    return scale * (DIAG * theta**2).sum()


def gd(lr: float, steps: int = 200) -> dict:
    theta = torch.tensor(THETA0, dtype=torch.float64)
    losses = []
    for _ in range(steps):
        theta = theta - lr * 2 * DIAG * theta
        losses.append(float(loss_of(theta)))
    return {"final_loss": losses[-1], "losses": losses, "lrs": [lr] * steps}


def dal(p: float, steps: int = 200, lr_max: float = 5.0, hvp: str = "exact", scale: float = 1.0) -> dict:
    theta = torch.tensor(THETA0, dtype=torch.float64, requires_grad=True)
    opt = DAL([theta], p=p, lr_max=lr_max, hvp=hvp)
    losses, first_div = [], None
    for t in range(steps):
        opt.step(lambda: loss_of(theta, scale))
        with torch.no_grad():
            losses.append(float(loss_of(theta)))
        if first_div is None and not losses[-1] < 1e20:
            first_div = t  # 0-based step index
    lrs = [h["lr"] for h in opt.history]
    return {
        "final_loss": losses[-1],
        "losses": losses,
        "lrs": lrs,
        "first_step_over_1e20": first_div,
        "theta": theta.detach().tolist(),
    }


def run(steps: int = 200) -> dict:
    res = {f"gd_{lr}": gd(lr, steps) for lr in (0.5, 0.9, 1.05)}
    for p in (1.0, 0.5, 2.0):
        res[f"dal_p{p:g}"] = dal(p, steps)
    for r in res.values():
        lrs = np.array(r["lrs"], dtype=float)
        r.update(
            lr_median=float(np.median(lrs)), lr_min=float(lrs.min()), lr_max=float(lrs.max()), lr_first=float(lrs[0])
        )
    return res


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in res.items():
        a1.semilogy([min(x, 1e30) for x in r["losses"]], label=name)
        a2.plot(r["lrs"], label=name)
    a1.set(xlabel="step", ylabel="loss")
    a2.set(xlabel="step", ylabel="learning rate", ylim=(0, 5.5))
    a1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/examples/dal_quadratic")
    ap.add_argument("--steps", type=int, default=200)
    a = ap.parse_args(argv)
    t0 = time.time()
    res = run(a.steps)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(res, out / "dal_quadratic.png")
    table = {k: {kk: vv for kk, vv in v.items() if kk not in ("losses", "lrs")} for k, v in res.items()}
    atomic_write_json(out / "dal_quadratic.json", {"table": table, "runs": res, "seconds": time.time() - t0})
    for k, v in table.items():
        fl = v["final_loss"]
        print(
            f"{k:10s} final loss {fl if math.isfinite(fl) else float('inf'):.4g}  lr median {v['lr_median']:.4f} "
            f"first {v['lr_first']:.4f} max {v['lr_max']:.4f}  >1e20 at {v.get('first_step_over_1e20')}"
        )
    return res


if __name__ == "__main__":
    main()
