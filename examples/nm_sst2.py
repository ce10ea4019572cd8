"""Progressive N:M gradient flow vs SR-STE at high sparsity on SST-2 (issue 6, item 6).

Fine-tunes MiniLM-L6 (or a tiny random BERT with ``--model tiny``) on a stratified SST-2 subset
with N:M-sparse FFN layers (intermediate and output dense of every block; attention, embeddings and
head stay dense), one run per recipe, and reports validation accuracy with the binary mask plus the
diagnostics (mask flip rate SAD and gradient-norm CV over the last 20 % of steps).

    python examples/nm_sst2.py --out runs/examples/nm_sst2
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from inflora.io import atomic_write_json
from inflora.remedies import NMSparsity, grad_cv, sparse_layers

RECIPES = ("dense", "ste", "sr-ste", "mdgf-exp", "sdgf-stepwise")


def load_data(n_train: int, n_val: int | None, seed: int = 0):
    from inflora.data import load_task

    tr = load_task("sst2", "train").stratified(n_train, seed)
    va = load_task("sst2", "validation")
    va = va.stratified(n_val, seed) if n_val else va
    return tr, va


def build(model_name: str, seed: int):
    from inflora.models import load_model, tiny_model

    torch.manual_seed(seed)
    if model_name == "tiny":
        from transformers import AutoTokenizer

        from inflora.models import resolve_model_path

        tok = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
        return tiny_model("bert", layers=2, hidden=64, heads=4, seed=seed).train(), tok
    model, tok = load_model(model_name, num_labels=2)
    return model.train(), tok


def encode(tok, texts, max_len):
    return tok(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")


@torch.no_grad()
def accuracy(model, tok, data, max_len: int, batch: int = 128) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(data), batch):
        enc = encode(tok, data.texts[i : i + batch], max_len)
        correct += int((model(**enc).logits.argmax(-1) == torch.tensor(data.labels[i : i + batch])).sum())
    model.train()
    return correct / len(data)


def run_one(
    recipe: str,
    pattern: str,
    data,
    model_name: str = "minilm",
    seed: int = 0,
    epochs: int = 2,
    batch: int = 32,
    lr: float = 1e-4,
    max_len: int = 40,
) -> dict:
    tr, va = data
    model, tok = build(model_name, seed)
    steps = epochs * math.ceil(len(tr) / batch)
    rem = None
    if recipe != "dense":
        rem = NMSparsity(pattern, recipe, alpha=math.log(100) / (0.6 * steps), total_steps=steps)
        rem.wrap_model(model)
    from inflora.models import get_blocks

    watched = [b.intermediate.dense for b in get_blocks(model)] + [b.output.dense for b in get_blocks(model)]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    norms, sads, losses, step = [], [], [], 0
    t0 = time.time()
    for _ in range(epochs):
        order = torch.randperm(len(tr), generator=gen).tolist()
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            enc = encode(tok, [tr.texts[j] for j in idx], max_len)
            labels = torch.tensor([tr.labels[j] for j in idx])
            opt.zero_grad(set_to_none=True)
            loss = model(**enc, labels=labels).loss
            loss.backward()
            norms.append([float(m.weight.grad.norm()) for m in watched])
            losses.append(float(loss.detach()))
            if rem:
                rem.after_backward(model, step)
            opt.step()
            if rem:
                rem.after_step(model, opt, step, enc)
                sads.append(rem.metrics().get("nm.sad", 0.0))
            step += 1
    train_s = time.time() - t0
    tail = max(1, step // 5)
    arr = np.array(norms[-tail:])
    sparse = sparse_layers(model)
    return {
        "recipe": recipe,
        "pattern": pattern,
        "seed": seed,
        "steps": step,
        "val_acc": accuracy(model, tok, va, max_len),
        "sad": float(np.mean(sads[-tail:])) if sads else 0.0,
        "grad_cv": float(np.mean([grad_cv(arr[:, k]) for k in range(arr.shape[1])])),
        "final_train_loss": float(np.mean(losses[-tail:])),
        "n_sparse_layers": len(sparse),
        "train_seconds": train_s,
    }


def run(
    pattern: str = "1:8",
    recipes=RECIPES,
    model_name: str = "minilm",
    n_train: int = 2000,
    n_val: int | None = None,
    epochs: int = 2,
    seeds=(0,),
    max_len: int = 40,
    lr: float = 1e-4,
) -> dict:
    data = load_data(n_train, n_val)
    rows = [run_one(r, pattern, data, model_name, s, epochs, max_len=max_len, lr=lr) for s in seeds for r in recipes]
    return {
        "config": {
            "pattern": pattern,
            "recipes": list(recipes),
            "model": model_name,
            "n_train": n_train,
            "n_val": len(data[1]),
            "epochs": epochs,
            "seeds": list(seeds),
            "max_len": max_len,
            "lr": lr,
        },
        "rows": rows,
    }


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    names = [r["recipe"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key in zip(axes, ("val_acc", "sad", "grad_cv")):
        ax.bar(range(len(rows)), [r[key] for r in rows], color=[f"C{i}" for i in range(len(rows))])
        ax.set_xticks(range(len(rows)), names, rotation=30, fontsize=8)
        ax.set_title(f"{key} ({res['config']['pattern']}, {res['config']['model']})")
    lo = min(r["val_acc"] for r in rows)
    axes[0].set_ylim(max(0.0, lo - 0.05), 1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/examples/nm_sst2")
    ap.add_argument("--model", default="minilm", help="minilm (pretrained) or tiny (random 2-layer BERT)")
    ap.add_argument("--pattern", default="1:8")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--val", type=int, default=0, help="validation subset size (0: all 872)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--max-len", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-4)
    a = ap.parse_args(argv)
    t0 = time.time()
    res = run(
        a.pattern,
        tuple(a.recipes.split(",")),
        a.model,
        a.train,
        a.val or None,
        a.epochs,
        tuple(range(a.seeds)),
        a.max_len,
        a.lr,
    )
    res["seconds"] = time.time() - t0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(res, out / "nm_sst2.png")
    atomic_write_json(out / "nm_sst2.json", res)
    for r in res["rows"]:
        print(
            f"{r['recipe']:14s} seed {r['seed']} val acc {r['val_acc']:.4f}  SAD {r['sad']:.2e}  CV {r['grad_cv']:.3f}  "
            f"loss {r['final_train_loss']:.3f}  {r['train_seconds']:.0f}s"
        )
    return res


if __name__ == "__main__":
    main()
