"""One process of the DDP callback test (see test_scale_ddp.py): a Trainer run with InflectionCallback.

Under torchrun (2 gloo ranks, per-device batch 4) or alone (batch 8): the same tiny dropout-free BERT,
the same 8 examples in sequential order, so each optimizer step sees the same global batch.
(``average_tokens_across_devices=False``: see the comment below; the callback records the gradients
Trainer really applies, so with that default on it would faithfully report world × larger ones.) Writes
this rank's recorded rows; the callback itself writes its JSON on the main process only."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def run(out: Path, batch_size: int) -> list[dict]:
    import transformers
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    from inflora.models import resolve_model_path
    from inflora.training.callback import InflectionCallback
    from test_callback import encoded, tiny_bert

    transformers.logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    cb = InflectionCallback(every=1, json_path=out / "profile.json")
    args = TrainingArguments(
        output_dir=str(out),
        use_cpu=True,
        seed=0,
        per_device_train_batch_size=batch_size,
        learning_rate=1e-2,
        max_steps=2,
        max_grad_norm=1e-6,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        report_to="none",
        train_sampling_strategy="sequential",
        # transformers 5 multiplies the loss by the world size for any model whose forward
        # takes **kwargs, assuming it divides by the global token count; a sequence
        # classifier's loss is a plain mean, so its DDP gradients would be world x larger
        average_tokens_across_devices=False,
    )
    Trainer(
        model=tiny_bert(layers=3),
        args=args,
        train_dataset=encoded(tok),
        data_collator=DataCollatorWithPadding(tok),
        callbacks=[cb],
    ).train()
    return cb.rows


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    rows = run(out, int(sys.argv[2]))
    (out / f"rows-rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(rows))
