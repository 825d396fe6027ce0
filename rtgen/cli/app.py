"""The shared Typer app, consoles and the one rule of every command: a user error is one line."""

from __future__ import annotations

import functools
import warnings

import typer
from rich.console import Console

from rtgen import __version__
from rtgen.core.errors import RtgenError, RtgenWarning

app = typer.Typer(
    help="rtgen: radiotherapy dose prediction and evaluation with state-space and diffusion models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: [section.key=value ...] must print as written
)
convert_app = typer.Typer(help="Convert patient data between formats.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(convert_app, name="convert")
bench_app = typer.Typer(help="Benchmarks that print a table (state the machine beside any figure you quote).",
                        no_args_is_help=True, rich_markup_mode=None)
app.add_typer(bench_app, name="bench")

out = Console()
err = Console(stderr=True)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, RtgenWarning):
        err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True, markup=True)
    else:
        err.print(f"[yellow]warning:[/] {category.__name__}: {message}", highlight=False, soft_wrap=True)


def fail(message: str) -> None:
    """Print one error line (no markup interpretation of the message)."""
    err.print("[red]error:[/] ", end="", highlight=False)
    err.print(message, markup=False, highlight=False, soft_wrap=True)


def user_errors(fn):
    """Turn RtgenError into one clear line on stderr and exit status 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        warnings.showwarning = _show_warning
        try:
            return fn(*args, **kwargs)
        except RtgenError as e:
            fail(str(e))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("[red]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def _version(value: bool):
    if value:
        out.print(f"rtgen {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    """rtgen: radiotherapy dose prediction and evaluation."""
