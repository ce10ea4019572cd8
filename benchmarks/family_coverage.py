"""Which families inflora can diagnose without a hand-written row: every ``config.model_type`` in
transformers' causal-LM and sequence-classification auto mappings, built from a small config
(``inflora.models.tiny.sized_config``), then ``diagnose`` on 2 batches of real data (rt-instruct
for causal LMs, Rotten Tomatoes for classifiers, MiniLM's tokenizer).

Each family ends in one outcome: ``works`` (state-space and hybrid models included: their
blocks without softmax attention get the gradient metrics, and entropy is NaN there with a flag); ``no small config`` (the config class or the model
cannot be built small, or it stays over 50 M parameters: not counted in the share); ``no attention``
(discovery finds no attention module: kept for a structure it cannot read); ``discovery`` (another
structure not found) or ``diagnose`` (the probe failed), each with the message. Results are
appended per family to ``results/family_coverage.jsonl`` (a rerun resumes) and summarised in
``results/family_coverage.md``.

    PYTHONPATH=src INFLORA_DATA_DIR=/work/shared/data HF_HUB_OFFLINE=1 python benchmarks/family_coverage.py
"""

from __future__ import annotations

import json
import math
import re
import signal
import sys
import time
import warnings
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
JSONL = RESULTS / "family_coverage.jsonl"
MAX_PARAMS = 50_000_000
TIMEOUT_S = 90


def model_types() -> list[str]:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    return sorted(set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) | set(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:150] if text else ''}"


def build(kind: str):
    """(model, task) of a small random-init ``kind`` or raises: causal LM where one exists."""
    from inflora.models.tiny import auto_class, tiny_config

    config = tiny_config(kind)
    for task in ("causal-lm", "classification"):
        try:
            auto = auto_class(config, task)
        except Exception:
            continue
        with torch.device("meta"):
            size = sum(p.numel() for p in auto.from_config(config).parameters())
        if size > MAX_PARAMS:
            raise MemoryError(f"{size / 1e6:.0f} M parameters from the small config")
        torch.manual_seed(0)
        model = (
            auto.from_config(config, attn_implementation="eager")
            if _eager_ok(auto, config)
            else auto.from_config(config)
        )
        model.config.name_or_path = f"tiny-{kind}"
        return model.eval(), task
    raise ValueError("no causal-LM or classification class")


def _eager_ok(auto, config) -> bool:
    try:
        with torch.device("meta"):
            auto.from_config(config, attn_implementation="eager")
        return True
    except Exception:
        return False


def try_family(kind: str, data: dict, tokenizer) -> dict:
    from inflora.diagnosis import diagnose
    from inflora.errors import ArchitectureError
    from inflora.models import arch_for

    t0 = time.perf_counter()
    try:
        model, task = build(kind)
    except Exception as exc:  # noqa: BLE001 - every failure is a finding, listed by reason
        return {"family": kind, "outcome": "no small config", "why": _first_line(exc)}
    try:
        spec = arch_for(model)
    except Exception as exc:  # noqa: BLE001 - ArchitectureError, or a discovery bug: both are listed
        outcome = (
            "no attention" if isinstance(exc, ArchitectureError) and "no attention module" in str(exc) else "discovery"
        )
        return {"family": kind, "task": task, "outcome": outcome, "why": _first_line(exc)}
    if task == "causal-lm" and not spec.causal:
        model, task, spec = as_encoder_or_decoder(model)
    _set_default_language(model)
    try:
        d = diagnose(model, data[task], tokenizer, batches=2, batch_size=4, max_length=32, progress=False, resamples=2)
        free = set(spec.attention_free_blocks)  # no softmax attention there: NaN entropy, said in the flags
        unmeasured = said_unmeasured(d.flags)  # maps not over the input's tokens: NaN entropy, said in the flags
        finite = all(
            math.isfinite(r["activation_grad_norm"])
            and (i in free | unmeasured or math.isfinite(r["attention_entropy"]))
            for i, r in enumerate(d.layers)
        )
        return {
            "family": kind,
            "task": task,
            "outcome": "works" if finite else "diagnose",
            "why": None if finite else "non-finite per-block numbers",
            "entropy": d.config["attention"],
            "no_attention_blocks": len(free),
            "entropy_unmeasured_blocks": len(unmeasured),
            "moe": bool(spec.moe),
            "blocks": spec.blocks,
            "seconds": round(time.perf_counter() - t0, 2),
        }
    except Exception as exc:  # noqa: BLE001
        return {"family": kind, "task": task, "outcome": "diagnose", "why": _first_line(exc)}


def said_unmeasured(flags: list[str]) -> set[int]:
    """The blocks whose entropy the diagnosis says it could not measure exactly (and left NaN)."""
    found = (re.match(r"attention entropy, layers \[([\d, ]*)\]:", f) for f in flags)
    return {int(i) for m in found if m for i in m.group(1).split(",") if i.strip()}


def as_encoder_or_decoder(model):
    """(model, task, spec) for a causal-LM class whose attention is not causal: an encoder's LM
    head is diagnosed as a classifier; a family without one (BertGeneration) runs as the decoder
    transformers asks for (``is_decoder=True``: its attention becomes causal)."""
    from inflora.models import arch_for
    from inflora.models.tiny import auto_class

    try:
        model = auto_class(model.config, "classification").from_config(model.config).eval()
        return model, "classification", arch_for(model)
    except Exception:  # noqa: BLE001
        pass
    if hasattr(model.config, "is_decoder") and not getattr(model.config, "is_encoder_decoder", False):
        model.config.is_decoder = True
        torch.manual_seed(0)
        model = type(model)(model.config).eval()
    return model, "causal-lm", arch_for(model)


def _set_default_language(model) -> None:
    """X-MOD routes every block through a per-language adapter and refuses input without one."""
    languages = getattr(model.config, "languages", None)
    if hasattr(model, "set_default_language") and languages:
        model.set_default_language(next(iter(languages)))


def _alarm(signum, frame):
    raise TimeoutError(f"over {TIMEOUT_S} s")


def run(kinds: list[str]) -> list[dict]:
    from inflora.data import load_task
    from inflora.models import load_model

    done = (
        {json.loads(line)["family"]: json.loads(line) for line in JSONL.read_text().splitlines()}
        if JSONL.exists()
        else {}
    )
    tokenizer = load_model("minilm")[1]
    data = {
        "causal-lm": load_task("rt-instruct", "validation"),
        "classification": load_task("rotten_tomatoes", "validation"),
    }
    signal.signal(signal.SIGALRM, _alarm)
    for kind in kinds:
        if kind in done:
            continue
        signal.alarm(TIMEOUT_S)
        try:
            row = try_family(kind, data, tokenizer)
        except TimeoutError as exc:
            row = {"family": kind, "outcome": "diagnose", "why": _first_line(exc)}
        finally:
            signal.alarm(0)
        done[kind] = row
        with JSONL.open("a") as f:  # one line per family: an interrupted run resumes here
            f.write(json.dumps(row) + "\n")
        print(f"{kind:28s} {row['outcome']:16s} {row.get('why') or ''}"[:160], flush=True)
    return [done[k] for k in kinds if k in done]


def summary(rows: list[dict]) -> str:
    built = [r for r in rows if r["outcome"] != "no small config"]
    works = [r for r in built if r["outcome"] == "works"]
    eager = sorted(
        r["family"]
        for r in works
        if r.get("entropy") == "eager" and not r.get("no_attention_blocks") and not r.get("entropy_unmeasured_blocks")
    )
    free = sorted(r["family"] for r in works if r.get("no_attention_blocks"))
    unmeasured = sorted(r["family"] for r in works if r.get("entropy_unmeasured_blocks"))
    lines = [
        "# Family coverage (benchmarks/family_coverage.py)",
        "",
        f"{len(rows)} model types in transformers' causal-LM and sequence-classification mappings; "
        f"{len(built)} build from a small config; **{len(works)} of {len(built)} "
        f"({len(works) / max(len(built), 1):.0%}) diagnose** with discovered structure.",
        "",
        f"Entropy from eager maps (said in the report): {', '.join(eager) or '-'}",
        "",
        f"Blocks without softmax attention (state-space, linear attention, RWKV time-mixing, FNet Fourier "
        f"mixing; gradient metrics only, "
        f"entropy does not apply and the diagnosis says so): {', '.join(free) or '-'}",
        "",
        f"Attention whose entropy cannot be measured exactly (no map even under eager, or a map not over the "
        f"input's tokens; gradient metrics only, entropy left out and the diagnosis says why): "
        f"{', '.join(unmeasured) or '-'}",
        "",
        "| family | outcome | why |",
        "|---|---|---|",
    ]
    for r in rows:
        if r["outcome"] != "works":
            lines.append(f"| {r['family']} | {r['outcome']} | {(r.get('why') or '').replace('|', '/')[:36]} |")
    lines += ["", "Works: " + ", ".join(r["family"] for r in works)]
    return "\n".join(lines) + "\n"


def main() -> None:
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    RESULTS.mkdir(exist_ok=True)
    rows = run(sys.argv[1:] or model_types())
    if not sys.argv[1:]:
        from inflora.io import atomic_write_text

        atomic_write_text(RESULTS / "family_coverage.md", summary(rows))
        print(summary(rows).splitlines()[2])


if __name__ == "__main__":
    main()
