"""ReDo on a non-stationary stream: random-label memorisation (other-methods.md, Appendix B).

12 tasks, each 600 standardised digits with fresh uniform random labels, 1 000 Adam steps per
task (state kept across tasks), MLP 64->128->128->10. Before each task switch the hidden layers are
scored on 256 examples; with ReDo the tau-dormant units are then recycled.

    python examples/redo_stream.py --out runs/examples/redo_stream
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from inflora.io import atomic_write_json
from inflora.remedies import ReDo, dormant_fraction, layer_scores


def digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    return torch.tensor(x)


def run_one(
    seed: int,
    redo: bool,
    tasks: int = 12,
    steps: int = 1000,
    tau: float = 0.1,
    adam_step: str = "reset_tensor",
    x_all: torch.Tensor | None = None,
) -> dict:
    x_all = digits() if x_all is None else x_all
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    remedy = ReDo(tau=tau, every=steps, adam_step=adam_step)
    remedy.wrap_model(model)
    rows = []
    for task in range(tasks):
        idx = torch.randperm(len(x_all), generator=gen)[:600]
        x, y = x_all[idx], torch.randint(0, 10, (600,), generator=gen)
        for _ in range(steps):
            b = torch.randint(0, 600, (64,), generator=gen)
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
        with torch.no_grad():
            acc = float((model(x).argmax(1) == y).float().mean())
        score_idx = torch.randperm(600, generator=gen)[:256]
        scores = layer_scores(model, x[score_idx], remedy.units)
        row = {"task": task + 1, "acc": acc}
        for li, s in enumerate(scores):
            for t in (0.0, 0.025, 0.1):
                row[f"layer{li + 1}@{t}"] = dormant_fraction(s, t)
        rows.append(row)
        if redo:
            remedy.score_batch = x[score_idx]
            remedy.after_step(model, opt, (task + 1) * steps - 1, None)
    dead2 = [r["layer2@0.0"] for r in rows]
    return {
        "seed": seed,
        "redo": redo,
        "adam_step": adam_step,
        "rows": rows,
        "final_dead": dead2[-1],
        "max_dead": max(dead2),
        "final_acc": rows[-1]["acc"],
        "mean_acc_last3": float(np.mean([r["acc"] for r in rows[-3:]])),
        "layer1_final_dead": rows[-1]["layer1@0.0"],
    }


def run(
    seeds=(0, 1),
    tasks: int = 12,
    steps: int = 1000,
    tau: float = 0.1,
    variants=(("none", False, "keep"), ("redo-reset_tensor", True, "reset_tensor")),
) -> dict:
    torch.set_num_threads(1)
    x_all = digits()
    out = {}
    for name, redo, adam_step in variants:
        out[name] = [run_one(s, redo, tasks, steps, tau, adam_step, x_all) for s in seeds]
    return {"config": {"seeds": list(seeds), "tasks": tasks, "steps": steps, "tau": tau}, "runs": out}


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for (name, runs), color in zip(res["runs"].items(), ("C3", "C0", "C2")):
        for i, r in enumerate(runs):
            tasks = [row["task"] for row in r["rows"]]
            a1.plot(tasks, [row["layer2@0.0"] for row in r["rows"]], color=color, label=name if i == 0 else None)
            a2.plot(tasks, [row["acc"] for row in r["rows"]], color=color, label=name if i == 0 else None)
    a1.set(xlabel="task", ylabel="dead share, hidden layer 2 (tau=0)")
    a2.set(xlabel="task", ylabel="train accuracy at task end")
    a1.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/examples/redo_stream")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--tasks", type=int, default=12)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--tau", type=float, default=0.1)
    a = ap.parse_args(argv)
    t0 = time.time()
    variants = (("none", False, "keep"), ("redo-keep", True, "keep"), ("redo-reset_tensor", True, "reset_tensor"))
    res = run(tuple(range(a.seeds)), a.tasks, a.steps, a.tau, variants)
    res["seconds"] = time.time() - t0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(res, out / "redo_stream.png")
    atomic_write_json(out / "redo_stream.json", res)
    for name, runs in res["runs"].items():
        print(
            f"{name:20s} final dead {[round(r['final_dead'], 3) for r in runs]} max {[round(r['max_dead'], 3) for r in runs]} "
            f"acc12 {[round(r['final_acc'], 3) for r in runs]} acc10-12 {[round(r['mean_acc_last3'], 3) for r in runs]}"
        )
    return res


if __name__ == "__main__":
    main()
