"""Reports: Markdown + self-contained HTML with embedded figures."""

from .diagnosis_report import explain, write_diagnosis_report
from .document import Report, fmt
from .finetune_report import write_finetune_report

__all__ = ["Report", "explain", "fmt", "write_diagnosis_report", "write_finetune_report"]
