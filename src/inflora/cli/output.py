"""How the command line prints: consoles sized by the terminal (or ``$COLUMNS``; 80 when neither is
known), and tables whose columns and number formats fit 80 columns without cutting a cell."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr)


def table(title: str, columns: list[str], tight: bool = False) -> Table:
    """A borderless table (a rule under the header): three characters per column less than boxes;
    ``tight`` keeps one space between columns instead of two (for matrices and many narrow columns)."""
    t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0) if tight else (0, 1))
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i == 0 else "right", no_wrap=True)
    return t


def layer_ranges(layers: list[int]) -> str:
    """[0, 1, 2, 4, 6, 7] -> '0-2,4,6-7': a band of any length in a few characters."""
    runs: list[list[int]] = []
    for i in sorted(layers):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs) or "-"
