"""A report written once as Markdown (PNG files beside it) and once as self-contained HTML.

Reports quote user-supplied strings (model names, data paths, column names, command lines), so
the HTML converter keeps no raw HTML and makes no links: ``<script>`` in a model name is shown as
text, never run. Only the images the report itself embeds become elements. Titles, headings and
table cells are put on one line (``validate.printable``), so a line break in a name cannot start a
Markdown block of its own.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from pathlib import Path

from ..io import atomic_write_bytes, atomic_write_text
from ..validate import printable

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}code{background:#f6f6f6;padding:0 .2em}"""


_UNSAFE_MARKDOWN = ("html_block",), ("html", "link", "reference", "short_reference", "autolink", "automail")


def markdown_to_html(text: str) -> str:
    """Markdown -> HTML with raw HTML escaped (shown as text) and no links."""
    import markdown as md

    converter = md.Markdown(extensions=["tables"])
    blocks, inline = _UNSAFE_MARKDOWN
    for name in blocks:
        converter.preprocessors.deregister(name)
    for name in inline:
        converter.inlinePatterns.deregister(name)
    return converter.convert(text)


def fmt(value, digits: int = 4) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return (
            f"{value:.{digits}g}"
            if abs(value) < 1e-3 or abs(value) >= 1e4
            else f"{value:.{digits}f}".rstrip("0").rstrip(".")
        )
    if isinstance(value, (list, tuple)):
        return "{" + ", ".join(fmt(v, digits) for v in value) + "}"
    return str(value)


def _cell(text: str) -> str:
    """A table cell stays one cell: one line (``printable``) and no bare ``|``."""
    return printable(text, 1000).replace("|", "\\|")


class Report:
    def __init__(self, title: str):
        self.title = printable(title, 1000)
        self.parts: list[str] = [f"# {self.title}\n"]
        self.figures: dict[str, bytes] = {}

    def heading(self, text: str, level: int = 2) -> "Report":
        self.parts.append(f"{'#' * level} {printable(text, 1000)}\n")
        return self

    def text(self, markdown: str) -> "Report":
        self.parts.append(markdown.strip() + "\n")
        return self

    def table(self, rows: list[dict], columns: list[str] | None = None, digits: int = 4) -> "Report":
        if not rows:
            return self.text("_(no rows)_")
        columns = columns or list(rows[0])
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(fmt(r.get(c, ""), digits)) for c in columns) + " |" for r in rows]
        self.parts.append("\n".join(lines) + "\n")
        return self

    def figure(self, fig, name: str, caption: str = "") -> "Report":
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.figures[f"{name}.png"] = buf.getvalue()
        self.parts.append(f"![{caption or name}]({name}.png)\n" + (f"\n*{caption}*\n" if caption else ""))
        return self

    def markdown(self) -> str:
        return "\n".join(self.parts)

    def html(self) -> str:
        body = markdown_to_html(self.markdown())

        def embed(m: re.Match) -> str:
            data = self.figures.get(m.group(1))
            return f'src="data:image/png;base64,{base64.b64encode(data).decode()}"' if data else m.group(0)

        body = re.sub(r'src="([^"]+\.png)"', embed, body)
        return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>{body}</body></html>\n"

    def write(self, out_dir: str | Path, stem: str = "report") -> dict[str, Path]:
        out = Path(out_dir)
        paths = {name: atomic_write_bytes(out / name, data) for name, data in self.figures.items()}
        paths["md"] = atomic_write_text(out / f"{stem}.md", self.markdown())
        paths["html"] = atomic_write_text(out / f"{stem}.html", self.html())
        return paths
