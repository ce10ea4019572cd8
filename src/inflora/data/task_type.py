"""The task type, decided in one place: what a piece of data asks the model to be.

Instruction data (prompt -> completion, or chat messages) trains a causal LM on its completions;
everything else trains a classifier. The question comes up before loading (``finetune`` and
``compare`` check LoRA targets on a meta model of the right kind), after loading (which model to
load, whether remedies apply, how a run is scored) and in between; each place asks ``task_type``.
A model already built answers for itself (``strategies.lora.task_type_of``: its heads).
"""

from __future__ import annotations

import os

from .instruction_files import is_instruction_source
from .instructions import InstructionDataset

CLASSIFICATION, CAUSAL_LM = "classification", "causal-lm"


def task_type(data, prompt_column: str = "prompt", messages_column: str = "messages") -> str:
    """``causal-lm`` for instruction data, else ``classification``. ``data``: a loaded dataset, or
    what names one before loading: a built-in task or a file (read by its first row's columns)."""
    if isinstance(data, InstructionDataset):
        return CAUSAL_LM
    if isinstance(data, (str, os.PathLike)) and is_instruction_source(data, prompt_column, messages_column):
        return CAUSAL_LM
    return CLASSIFICATION
