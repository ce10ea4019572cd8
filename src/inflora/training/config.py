"""Fine-tuning configuration: one dataclass, hashed to name and validate a run folder."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from ..remedies import typed_remedy_options
from ..validate import LORA_DEFAULTS


_KEY_DEFAULTS = {
    "precision": "fp32",
    "grad_accum": 1,
    "text_column": "text",
    "label_column": "label",
    "retention_task": None,
    "lisa_interval": 20,
    "new_head": False,
    "prompt_column": "prompt",
    "completion_column": "completion",
    "messages_column": "messages",
    "keep_predictions": False,
    "tower": "language",
}


@dataclass
class FinetuneConfig:
    model: str = "minilm"
    task: str = "rotten_tomatoes"
    strategy: str = "lora-inflection"
    epochs: int = 1
    seed: int = 42
    lr: float | None = None  # None: the strategy's default (full 2e-5, LoRA 5e-4, ...)
    batch_size: int = 32
    eval_batch_size: int = 128
    max_length: int = 64
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    optimizer: str = "adamw"  # adamw | sgd (plain, no momentum: what DAL assumes)
    max_grad_norm: float = 1.0
    limit_train: int | None = None  # stratified subsets for quick runs
    limit_eval: int | None = None
    layers: list[int] | None = None  # explicit band for lora-inflection / size for lora-random
    diagnosis: str | None = None  # a diagnosis.json giving the band
    diagnose_batches: int = 8  # on-the-fly diagnosis when neither is given
    k: int = 2  # shallow: top-k blocks; lisa: active blocks
    lisa_interval: int = 20  # lisa: resample the active blocks every N optimizer steps
    lora_r: int = LORA_DEFAULTS.r
    lora_alpha: int = LORA_DEFAULTS.alpha
    lora_dropout: float = LORA_DEFAULTS.dropout
    lora_targets: list[str] | None = None
    init: str | None = None  # start from a saved fine-tuned model (source -> target)
    new_head: bool = False  # ...with a fresh head for the task's labels (SST-2 -> TREC); the
    # retention task is then scored with the init's own head
    log_every: int = 10  # training-time gradient profile every N steps
    cka_examples: int = 512  # 0: skip ΔCKA
    cka_pooling: str = "mean"
    decontaminate_against: str | None = "sst2"  # also report test accuracy without source overlap
    retention_task: str | None = None  # forgetting: also report this task's validation accuracy at the end
    attn_implementation: str = "sdpa"
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (see inflora.devices)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast through accelerate; fp16 needs a GPU)
    grad_accum: int = 1  # micro-batches of --batch-size per optimizer step (per process)
    remedies: list[str] = field(default_factory=list)
    remedy_options: dict = field(default_factory=dict)
    data_dir: str | None = None
    text_column: str = "text"  # columns of a user data file (--task my.csv)
    label_column: str = "label"
    prompt_column: str = "prompt"  # an instruction file (--task data.jsonl): prompt/completion or chat
    completion_column: str = "completion"
    messages_column: str = "messages"
    save_model: bool = False  # save the final model (needed as a source for --init)
    save_epochs: list[int] = field(default_factory=list)  # also save the model after these epochs (UNDER/OVER)
    keep_predictions: bool = False  # metrics.json keeps per-example test scores (paired bootstraps over examples)
    tower: str = "language"  # multimodal models: the block list trained (text data: the language tower)

    def __post_init__(self):
        # remedy options as their declared types: the CLI's text "0.05" and the API's 0.05 are one run
        self.remedy_options = typed_remedy_options(self.remedy_options)

    def to_dict(self) -> dict:
        return asdict(self)

    def key(self) -> str:
        """A digest of everything that changes the result (see ``config_key``)."""
        return config_key(self.to_dict())


def config_key(config: dict) -> str:
    """The digest of a configuration as ``FinetuneConfig.to_dict`` or a run folder gives it: not
    where data is read from nor which device computes it (a run may resume on another one);
    precision, accumulation and the retention task only when not the defaults, so folders written
    before they existed keep their key."""
    d = {k: v for k, v in config.items() if k not in ("data_dir", "device")}
    for name, default in _KEY_DEFAULTS.items():
        if name in d and d[name] == default:
            del d[name]
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
