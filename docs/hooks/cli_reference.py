"""MkDocs hook: fill the CLI reference page from the typer app (see inflora.cli.reference)."""

from inflora.cli.reference import cli_reference_markdown

PLACEHOLDER = "<!-- cli-reference -->"


def on_page_markdown(markdown, page, **kwargs):
    if PLACEHOLDER in markdown:
        return markdown.replace(PLACEHOLDER, cli_reference_markdown())
    return markdown
