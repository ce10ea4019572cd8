"""Training: the resumable fine-tuning loop, training-time diagnostics, and a Trainer callback."""

from .callback import InflectionCallback
from .config import FinetuneConfig
from .finetune import finetune, save_final_model

__all__ = ["FinetuneConfig", "InflectionCallback", "finetune", "save_final_model"]
