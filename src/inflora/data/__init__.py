"""Data layer: built-in tasks (exact split recipes), user files, instruction data, decontamination."""

from .batching import EncodedSplit, collate, probe_batches
from .dataset import TextDataset
from .decontam import decontaminate, normalize, overlap_mask
from .files import load_file
from .instruction_batching import EncodedInstructions, encode_split, instruction_probe_batches
from .instruction_files import is_instruction_file, is_instruction_source, load_instructions
from .instructions import InstructionDataset
from .sources import is_user_file, load_any
from .task_type import CAUSAL_LM, CLASSIFICATION, task_type
from .tasks import ENV_VAR, TASKS, is_instruction_task, load_task, resolve_data_dir

__all__ = [
    "CAUSAL_LM",
    "CLASSIFICATION",
    "ENV_VAR",
    "TASKS",
    "EncodedInstructions",
    "EncodedSplit",
    "InstructionDataset",
    "TextDataset",
    "collate",
    "decontaminate",
    "encode_split",
    "instruction_probe_batches",
    "is_instruction_file",
    "is_instruction_source",
    "is_instruction_task",
    "is_user_file",
    "load_any",
    "load_file",
    "load_instructions",
    "load_task",
    "normalize",
    "overlap_mask",
    "probe_batches",
    "resolve_data_dir",
    "task_type",
]
