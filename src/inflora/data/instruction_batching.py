"""Instruction examples as token ids with a completion-only loss mask.

Prompt and completion are tokenised separately and joined, so the boundary is exact: the labels are
the input ids with every prompt position (and padding) set to -100. An example longer than
``max_length`` loses prompt tokens from the left, never completion tokens; the count is reported.
Rows that cannot fit (a prompt longer than ``max_length`` on its own, or a completion that leaves no
room for one prompt token) are skipped and counted.
"""

from __future__ import annotations

import logging
import random
from collections import Counter

import torch

from ..errors import DataError
from .batching import EncodedSplit, collate
from .instructions import InstructionDataset, render

log = logging.getLogger(__name__)
IGNORE_INDEX = -100


def special_ids(tokenizer, chat: bool) -> tuple[list[int], list[int]]:
    """BOS before a plain-text prompt and EOS after its completion, where the tokenizer has them (a
    chat template writes its own special tokens)."""
    if chat:
        return [], []
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "bos_token_id", None) is not None else []
    eos = [tokenizer.eos_token_id] if getattr(tokenizer, "eos_token_id", None) is not None else []
    return bos, eos


def tokenize_example(tokenizer, prompt, completion: str) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of one example, special tokens included."""
    prompt_text, completion_text = render(prompt, completion, tokenizer)
    bos, eos = special_ids(tokenizer, chat=not isinstance(prompt, str))
    ids = tokenizer([prompt_text, completion_text], add_special_tokens=False)["input_ids"]
    return bos + ids[0], ids[1] + eos


def fit(prompt_ids: list[int], completion_ids: list[int], max_length: int) -> tuple[list[int], list[int], str | None]:
    """Cut the prompt from the left so the whole fits; returns the ids, the prompt length and the
    outcome (None: fits, 'truncated', or why the row cannot be used)."""
    if len(prompt_ids) > max_length:
        return [], [], "prompt alone longer than --max-length"
    if len(completion_ids) >= max_length:
        return [], [], "completion leaves no room for the prompt within --max-length"
    room = max_length - len(completion_ids)
    outcome = "truncated" if len(prompt_ids) > room else None
    kept = prompt_ids[len(prompt_ids) - min(room, len(prompt_ids)) :]
    return kept + completion_ids, kept, outcome


def completion_labels(batch: dict[str, torch.Tensor], prompt_lens: list[int]) -> dict[str, torch.Tensor]:
    """Mask the prompt positions of an already padded causal-LM batch."""
    labels = batch["labels"]
    for i, n in enumerate(prompt_lens):
        labels[i, :n] = IGNORE_INDEX
    return batch


class EncodedInstructions(EncodedSplit):
    """An instruction split tokenised once; batches carry completion-only labels.

    ``truncated`` counts examples that lost prompt tokens; ``skipped`` (with ``skipped_reasons``)
    those that could not fit at all. ``prompt_ids``/``option_ids`` serve label-option scoring."""

    def __init__(self, ds: InstructionDataset, tokenizer, max_length: int):
        if not isinstance(ds, InstructionDataset):
            raise DataError(f"{ds.name}/{ds.split} holds no prompts and completions")
        self.ds, self.tokenizer, self.causal_lm, self.max_length = ds.require_nonempty(), tokenizer, True, max_length
        self.ids, self.prompt_lens, self.rows = [], [], []
        self.skipped_reasons: Counter = Counter()
        self.truncated = 0
        for i, (prompt, completion) in enumerate(zip(ds.prompts, ds.completions)):
            ids, kept, outcome = fit(*tokenize_example(tokenizer, prompt, completion), max_length)
            if not ids:
                self.skipped_reasons[outcome] += 1
                continue
            self.truncated += outcome == "truncated"
            self.ids.append(ids)
            self.prompt_lens.append(len(kept))
            self.rows.append(i)
        self.skipped = sum(self.skipped_reasons.values())
        if not self.ids:
            raise DataError(
                f"{ds.name}/{ds.split}: no example fits --max-length {max_length} ({dict(self.skipped_reasons)})"
            )
        if self.truncated or self.skipped:
            log.warning(
                "%s/%s: %d example(s) lost prompt tokens from the left and %d were skipped %s (--max-length %d)",
                ds.name,
                ds.split,
                self.truncated,
                self.skipped,
                dict(self.skipped_reasons) or "",
                max_length,
            )

    @property
    def labels(self) -> list[int]:
        return [self.ds.labels[i] for i in self.rows]

    def collate_rows(self, rows: list[int]) -> dict[str, torch.Tensor]:
        batch = collate(self.tokenizer, [self.ids[i] for i in rows], None, causal_lm=True)
        return completion_labels(batch, [self.prompt_lens[i] for i in rows])

    def stats(self) -> dict:
        return {
            "examples": len(self.ids),
            "truncated": self.truncated,
            "skipped": self.skipped,
            "skipped_reasons": dict(self.skipped_reasons),
        }


def instruction_probe_batches(
    ds: InstructionDataset, tokenizer, *, batches: int, batch_size: int, max_length: int, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Fixed shuffled probe batches with completion-only labels (stratified by label option)."""
    if batches < 1 or batch_size < 1:
        raise DataError(
            f"need at least one batch of at least one example (got batches={batches}, batch_size={batch_size})"
        )
    sub = ds.require_nonempty().stratified(min(len(ds), batches * batch_size), seed=seed)
    enc = EncodedInstructions(sub, tokenizer, max_length)
    order = list(range(len(enc)))
    random.Random(seed).shuffle(order)
    return [enc.collate_rows(order[s : s + batch_size]) for s in range(0, len(order), batch_size)][:batches]


def encode_split(ds, tokenizer, max_length: int) -> EncodedSplit:
    """A split tokenised for training/evaluation: completion-only labels for instruction data,
    class labels otherwise."""
    if isinstance(ds, InstructionDataset):
        return EncodedInstructions(ds, tokenizer, max_length)
    return EncodedSplit(ds, tokenizer, max_length)
