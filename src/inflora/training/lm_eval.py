"""Causal-LM evaluation on instruction data: mean completion loss, perplexity and, when the
completions are labels, accuracy by scoring each label option.

Loss and perplexity are token-weighted over completion tokens only (exp of the mean NLL). Option
scoring gives each example's prompt every option as its completion and predicts the option with the
lowest summed NLL (the log-likelihood ranking of lm-evaluation-harness' ``acc``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data import CAUSAL_LM, EncodedInstructions, task_type
from ..data.instruction_batching import IGNORE_INDEX, fit, tokenize_example
from ..errors import ConfigError
from ..models import hf_model
from .evaluate import accuracy, correct_rows


def sequence_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: summed next-token NLL over the labelled (completion) positions, and their count.

    The LM head is applied to those positions only: with a 30k-150k vocabulary, logits for every
    prompt token would cost far more than the forward pass of a small model."""
    inner = hf_model(model)
    labels = batch["labels"][:, 1:]
    hidden = inner.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = labels != IGNORE_INDEX
    logits = inner.get_output_embeddings()(hidden[:, :-1][mask]).float()
    nll = F.cross_entropy(logits, labels[mask], reduction="none")
    rows = mask.nonzero()[:, 0]
    return torch.zeros(len(labels), device=nll.device).index_add_(0, rows, nll), mask.sum(1)


@torch.no_grad()
def _row_nll(model, split: EncodedInstructions, batch_size: int) -> tuple[list[float], list[int]]:
    """Summed completion NLL and completion token count of every row of ``split``."""
    device = next(model.parameters()).device
    sums, counts = [0.0] * len(split), [0] * len(split)
    rows = split.row_order(by_length=True)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        s, c = sequence_nll(model, {k: v.to(device) for k, v in split.collate_rows(chunk).items()})
        for i, row in enumerate(chunk):
            sums[row], counts[row] = float(s[i]), int(c[i])
    return sums, counts


class OptionSplit(EncodedInstructions):
    """Every (example, option) pair of an instruction split, with completion-only labels."""

    def __init__(self, split: EncodedInstructions):  # no super().__init__: it would re-tokenise the split
        ds, tok = split.ds, split.tokenizer
        self.ds, self.tokenizer, self.causal_lm, self.max_length = ds, tok, True, split.max_length
        self.ids, self.prompt_lens, self.pairs = [], [], []
        for j, row in enumerate(split.rows):
            prompt = split.ids[j][: split.prompt_lens[j]]
            for k, option in enumerate(ds.options):
                ids, kept, _ = fit(prompt, tokenize_example(tok, ds.prompts[row], option)[1], split.max_length)
                if ids:
                    self.ids.append(ids)
                    self.prompt_lens.append(len(kept))
                    self.pairs.append((j, k))


def option_correct(model, split: EncodedInstructions, batch_size: int = 64) -> list[int]:
    """Per example, 1 when its own completion has the lowest summed NLL among the label options."""
    pairs = OptionSplit(split)
    sums, _ = _row_nll(model, pairs, batch_size)
    best: dict[int, tuple[float, int]] = {}
    for (j, k), nll in zip(pairs.pairs, sums):
        if j not in best or nll < best[j][0]:
            best[j] = (nll, k)
    gold = split.labels
    return [int(j in best and best[j][1] == gold[j]) for j in range(len(split))]


def option_accuracy(model, split: EncodedInstructions, batch_size: int = 64) -> float:
    """Share of examples whose own completion has the lowest summed NLL among the label options."""
    return sum(option_correct(model, split, batch_size)) / len(split)


def completion_metrics(model, split: EncodedInstructions, batch_size: int = 64) -> dict:
    """``completion_loss`` (mean NLL per completion token), ``perplexity`` and, when the split has
    label options, ``accuracy``. Runs in eval mode; the model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        sums, counts = _row_nll(model, split, batch_size)
        loss = sum(sums) / max(sum(counts), 1)
        out = {
            "completion_loss": loss,
            "perplexity": math.exp(loss) if loss < 700 else math.inf,
            "completion_tokens": sum(counts),
        }
        if split.ds.options:
            out["accuracy"] = option_accuracy(model, split, batch_size)
    finally:
        model.train(was_training)
    return out


def evaluate_split(model, split, batch_size: int = 64, accelerator=None) -> dict:
    """One split's scores: ``accuracy`` for classification; for instruction data the completion
    metrics (``accuracy`` by option scoring when the completions are labels). ``score`` is what
    best-epoch selection maximises: accuracy where there is one, else minus the completion loss."""
    if isinstance(split, EncodedInstructions):
        out = completion_metrics(model, split, batch_size)
    else:
        out = {
            "accuracy": accuracy(model, split, batch_size, accelerator)
            if accelerator
            else accuracy(model, split, batch_size)
        }
    out["score"] = out["accuracy"] if "accuracy" in out else -out["completion_loss"]
    return out


def per_example(model, split, batch_size: int = 64) -> dict[str, list]:
    """Per-example scores in row order, for paired bootstraps over examples: ``correct`` (0/1) for a
    classifier or where the completions are label options; ``completion_loss`` (mean NLL per completion
    token of each example) for instruction data. One process; the model's mode is restored."""
    if not isinstance(split, EncodedInstructions):
        return {"correct": correct_rows(model, split, batch_size)}
    was_training = model.training
    model.eval()
    try:
        sums, counts = _row_nll(model, split, batch_size)
        out = {"completion_loss": [s / c if c else math.nan for s, c in zip(sums, counts)]}
        if split.ds.options:
            out["correct"] = option_correct(model, split, batch_size)
    finally:
        model.train(was_training)
    return out


def check_instruction_run(cfg, splits: dict) -> bool:
    """True for instruction data (a causal-LM run). Remedies act on classification logits and labels,
    so they are refused here rather than misapplied to next-token logits."""
    causal = task_type(splits["train"]) == CAUSAL_LM
    if causal and cfg.remedies:
        raise ConfigError(
            f"remedies ({', '.join(cfg.remedies)}) act on classification losses; "
            "they cannot be used with instruction data"
        )
    return causal
