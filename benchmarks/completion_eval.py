"""Completion-loss evaluation: the LM head on every position vs only on completion positions.

``training.lm_eval.sequence_nll`` runs the backbone, then the LM head only where a label is set
(the completion), instead of computing logits for every prompt token and masking them afterwards.
On a causal LM with a 30k-150k vocabulary and a short completion (rt-instruct: one label token after
a ~25-token prompt) that skips most of the head's work. This script checks both give the same mean
completion loss and measures the time ratio on a tiny random-init decoder over rt-instruct.

Timing: one warm-up pass of each way, then ``--rounds`` rounds each timing one full pass per way in
a freshly shuffled order. Reported: median pass time per way, the median over rounds of
(positions / full), and the largest difference in the loss.

    python benchmarks/completion_eval.py --model tiny-qwen2 --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time


def full_logits_nll(model, batch):
    """The plain way: logits for every position, masked NLL (what ``model(**batch).loss`` does)."""
    import torch.nn.functional as F

    labels = batch["labels"][:, 1:]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    nll = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    mask = labels != -100
    return (nll * mask).sum(1), mask.sum(1)


def mean_loss(model, split, batch_size: int, fn) -> float:
    import torch

    total = count = 0.0
    rows = split.row_order(by_length=True)
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            s, c = fn(model, split.collate_rows(rows[start : start + batch_size]))
            total, count = total + float(s.sum()), count + float(c.sum())
    return total / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny-qwen2")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--data-dir", default=None, help="data folder (default: $INFLORA_DATA_DIR)")
    ap.add_argument("--out", default="benchmarks/results/completion_eval.json")
    args = ap.parse_args()

    import torch
    import transformers

    from inflora.data import EncodedInstructions, load_task
    from inflora.io import atomic_write_json, versions
    from inflora.models import load_model
    from inflora.training.lm_eval import sequence_nll

    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.model, task="causal-lm", attn_implementation="sdpa")
    model.eval()
    split = EncodedInstructions(load_task("rt-instruct", args.split, args.data_dir), tok, args.max_length)
    ways = {"full": full_logits_nll, "positions": sequence_nll}
    load_before = os.getloadavg()
    losses = {name: mean_loss(model, split, args.batch_size, fn) for name, fn in ways.items()}  # warm-up
    times = {name: [] for name in ways}
    rng = random.Random(0)
    for r in range(args.rounds):
        names = list(ways)
        rng.shuffle(names)
        for name in names:
            t0 = time.perf_counter()
            mean_loss(model, split, args.batch_size, ways[name])
            times[name].append(time.perf_counter() - t0)
        print(f"round {r + 1}/{args.rounds}: " + "  ".join(f"{n} {times[n][-1]:.2f}s" for n in ways), flush=True)
    ratios = [p / f for p, f in zip(times["positions"], times["full"])]
    result = {
        "config": vars(args),
        "rows": len(split),
        "vocab_size": model.config.vocab_size,
        "completion_tokens": sum(len(x) - n for x, n in zip(split.ids, split.prompt_lens)),
        "all_tokens": sum(len(x) for x in split.ids),
        "median_seconds": {n: statistics.median(t) for n, t in times.items()},
        "seconds": times,
        "positions_over_full": statistics.median(ratios),
        "positions_over_full_per_round": ratios,
        "mean_completion_loss": losses,
        "loss_difference": abs(losses["full"] - losses["positions"]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
            "note": "shared 2-core machine: other jobs ran alongside; the ratio is what to read",
        },
        "versions": versions(),
    }
    atomic_write_json(args.out, result)
    print(
        f"positions/full time {result['positions_over_full']:.3f}x (median over {args.rounds} rounds); "
        f"loss {losses['positions']:.6f} vs {losses['full']:.6f}; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
