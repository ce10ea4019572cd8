"""The ``inflora`` command line: diagnose, finetune, export, experiment, demo, info."""

from __future__ import annotations

import functools
import logging
import os
import sys

import typer
from typer.core import TyperGroup


class OneLineErrors(TyperGroup):
    """Usage errors too (an unknown option, a value of the wrong type) end in one line
    ``error: …`` and exit code 2, like every other bad input."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.Abort:
            typer.secho("error: aborted", fg="red", err=True)
            sys.exit(1)
        except Exception as exc:  # click's usage errors: they carry their message and exit code
            if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
                raise
            ctx, message = getattr(exc, "ctx", None), exc.format_message()
            if ctx is not None and not message:  # no arguments at all: the help is the answer
                typer.echo(ctx.get_help())
            else:
                hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
                typer.secho(f"error: {message}{hint}", fg="red", err=True)
            sys.exit(exc.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Diagnose where gradient flow is suppressed in a pretrained Transformer, then adapt only there.",
)


def quiet_libraries() -> None:
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    ours = logging.getLogger("inflora")
    if not any(isinstance(h, _UserMessages) for h in ours.handlers):
        ours.addHandler(_UserMessages(logging.WARNING))


class _UserMessages(logging.Handler):
    """inflora's warnings (skipped data rows, attention switches, ...) as ``warning: …`` lines on
    the stderr of the moment, however logging was configured before."""

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(f"{record.levelname.lower()}: {record.getMessage()}", err=True)


def friendly_errors(fn):
    """User mistakes become one line on stderr (exit 2), never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..errors import InfloraError

        quiet_libraries()
        try:
            return fn(*args, **kwargs)
        except InfloraError as exc:
            typer.secho(f"error: {exc}", fg="red", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.secho("interrupted: finished units are saved; run the same command again to resume", err=True)
            raise typer.Exit(130) from None

    return wrapper


def command(name: str | None = None, **kw):
    def deco(fn):
        return app.command(name, **kw)(friendly_errors(fn))

    return deco


from . import compare, demo, diagnose, experiment, export, finetune, info  # noqa: E402,F401  (registers the commands)
from . import plan  # noqa: E402,F401  (inflora plan: memory per strategy)


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="inflora")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
