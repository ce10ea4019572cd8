"""What the output-saturation diagnostic adds to a diagnosis: MiniLM on Rotten Tomatoes validation.

Two probe passes over the same N batches on the same model object, each forward + backward with the
hooks of ``diagnose``'s diagnostics: *without* = attention entropy, activation and parameter
gradients, dormant units; *with* = the same plus ``output`` (softmax statistics of the logits and,
per block, the wrong/right split of ‖∂L/∂h‖). After a warm-up, each of ``--repeats`` rounds runs
both back to back, alternating the order; the headline is the median over rounds of with/without,
so each ratio compares timings taken seconds apart on a possibly busy machine.

    python benchmarks/output_overhead.py --batches 8 --batch-size 32 --max-length 64 --repeats 5 \\
        --out benchmarks/results/output_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

WITHOUT = ["attention_entropy", "activation_grad", "param_grad", "dormant"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/output_overhead.json"))
    args = ap.parse_args()

    import torch
    import transformers

    from inflora.data import load_task, probe_batches
    from inflora.models import load_model
    from inflora.probe import LayerProbe, probe_step

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    model, tok = load_model("minilm", num_labels=2)
    model.eval()
    batches = probe_batches(
        load_task("rotten_tomatoes", "validation", args.data_dir),
        tok,
        batches=args.batches,
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=0,
    )

    def probe(names):
        start = time.perf_counter()
        with LayerProbe(model, names) as p:
            for b in batches:
                probe_step(model, p, b)
        return time.perf_counter() - start

    variants = {"without": WITHOUT, "with": WITHOUT + ["output"]}
    for names in variants.values():
        probe(names)  # warm-up
    rounds = []
    for r in range(args.repeats):
        order = list(variants) if r % 2 == 0 else list(variants)[::-1]
        rounds.append({k: probe(variants[k]) for k in order})
        print(f"round {r + 1}/{args.repeats}: " + "  ".join(f"{k} {v:.2f}s" for k, v in rounds[-1].items()), flush=True)
    ratios = [t["with"] / t["without"] for t in rounds]
    result = {
        "what": "probe time with the output diagnostic / without it (same batches, interleaved rounds)",
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
        "seconds": rounds,
        "config": vars(args) | {"out": str(args.out)},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "note": "shared 2-core CPU box, other jobs running; ratios only",
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"with / without output diagnostic: median {result['ratio_median']:.3f} over {len(ratios)} rounds -> {args.out}"
    )


if __name__ == "__main__":
    main()
