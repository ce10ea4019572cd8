"""N:M recipes on a digits MLP (other-methods.md, Appendix C): the fast SAD / grad-norm-CV check.

MLP 64->256->256->10 with N:M hidden layers (row mode), Adam 1e-3, batch 64, 4 000 steps,
alpha = ln(100)/(0.6 T), evaluation with the binary mask. The accuracy ranking is *not* expected to
reproduce at this scale; the diagnostics (mask flip rate SAD, gradient-norm CV over the last 20 %
of steps) should separate the recipes: SR-STE freezes the mask, STE is noisy.

    python examples/nm_digits.py --out runs/examples/nm_digits
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from inflora.io import atomic_write_json
from inflora.remedies import NMSparsity, grad_cv

RECIPES = ("dense", "ste", "sr-ste", "mdgf-exp", "sdgf-stepwise")


def digits_split(seed: int = 0):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data.astype(np.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    perm = np.random.RandomState(seed).permutation(len(x))
    tr, te = perm[:1200], perm[1200:]
    return (torch.tensor(x[tr]), torch.tensor(d.target[tr])), (torch.tensor(x[te]), torch.tensor(d.target[te]))


def run_one(recipe: str, pattern: str, seed: int, steps: int = 4000, data=None) -> dict:
    (xtr, ytr), (xte, yte) = data or digits_split(0)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    watched = [model[0], model[2]]
    rem = None
    if recipe != "dense":
        rem = NMSparsity(pattern, recipe, alpha=math.log(100) / (0.6 * steps), total_steps=steps, targets=["0", "2"])
        rem.wrap_model(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    norms, sads = [], []
    for step in range(steps):
        b = torch.randint(0, len(xtr), (64,), generator=gen)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(xtr[b]), ytr[b]).backward()
        norms.append([float(layer.weight.grad.norm()) for layer in watched])
        if rem:
            rem.after_backward(model, step)
        opt.step()
        if rem:
            rem.after_step(model, opt, step, None)
            sads.append(rem.metrics().get("nm.sad", 0.0))
    model.eval()
    with torch.no_grad():
        acc = float((model(xte).argmax(1) == yte).float().mean())
    tail = max(1, steps // 5)
    arr = np.array(norms[-tail:])
    return {
        "recipe": recipe,
        "pattern": pattern,
        "seed": seed,
        "acc": acc,
        "sad": float(np.mean(sads[-tail:])) if sads else 0.0,
        "grad_cv": float(np.mean([grad_cv(arr[:, i]) for i in range(arr.shape[1])])),
        "sad_curve": sads[:: max(1, steps // 200)],
    }


def run(patterns=("1:8", "1:16", "1:32"), recipes=RECIPES, seeds=(0, 1, 2), steps: int = 4000) -> dict:
    torch.set_num_threads(1)
    data = digits_split(0)
    rows = [run_one(r, p, s, steps, data) for p in patterns for r in recipes for s in seeds]
    summary = {}
    for p in patterns:
        for r in recipes:
            sel = [x for x in rows if x["pattern"] == p and x["recipe"] == r]
            summary[f"{p}/{r}"] = {k: float(np.mean([x[k] for x in sel])) for k in ("acc", "sad", "grad_cv")}
            summary[f"{p}/{r}"]["acc_sd"] = float(np.std([x["acc"] for x in sel]))
    return {
        "config": {"patterns": list(patterns), "recipes": list(recipes), "seeds": list(seeds), "steps": steps},
        "rows": rows,
        "summary": summary,
    }


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pats, recs = res["config"]["patterns"], res["config"]["recipes"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key in zip(axes, ("acc", "sad", "grad_cv")):
        for i, r in enumerate(recs):
            ax.bar(np.arange(len(pats)) + i * 0.15, [res["summary"][f"{p}/{r}"][key] for p in pats], 0.15, label=r)
        ax.set_xticks(np.arange(len(pats)) + 0.3, pats)
        ax.set_title(key)
    axes[1].set_yscale("symlog", linthresh=1e-5)
    axes[0].set_ylim(0.9, 1.0)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/examples/nm_digits")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--patterns", default="1:8,1:16,1:32")
    a = ap.parse_args(argv)
    t0 = time.time()
    res = run(tuple(a.patterns.split(",")), RECIPES, tuple(range(a.seeds)), a.steps)
    res["seconds"] = time.time() - t0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(res, out / "nm_digits.png")
    atomic_write_json(out / "nm_digits.json", res)
    for k, v in res["summary"].items():
        print(f"{k:22s} acc {v['acc']:.4f} ± {v['acc_sd']:.4f}  SAD {v['sad']:.2e}  CV {v['grad_cv']:.2f}")
    return res


if __name__ == "__main__":
    main()
