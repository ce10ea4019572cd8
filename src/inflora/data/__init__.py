"""Data layer: built-in tasks (exact split recipes), user files, decontamination."""
from .batching import EncodedSplit, collate, probe_batches
from .dataset import TextDataset
from .decontam import decontaminate, normalize, overlap_mask
from .files import load_file
from .tasks import ENV_VAR, TASKS, load_task, resolve_data_dir

__all__ = [
    "ENV_VAR", "TASKS", "EncodedSplit", "collate", "probe_batches", "TextDataset", "decontaminate", "load_file", "load_task", "normalize",
    "overlap_mask", "resolve_data_dir",
]
