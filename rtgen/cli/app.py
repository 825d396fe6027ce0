"""The shared Typer app, consoles and the one rule of every command: a user error is one line."""

from __future__ import annotations

import contextvars
import functools
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console

from rtgen import __version__
from rtgen.core.errors import OutputError, RtgenError, RtgenNote, RtgenWarning

T = TypeVar("T")

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
    if issubclass(category, RtgenNote):
        err.print("[cyan]note:[/] ", end="", highlight=False)
        err.print(str(message), markup=False, highlight=False, soft_wrap=True)
    elif issubclass(category, RtgenWarning):
        err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True, markup=True)
    else:
        err.print(f"[yellow]warning:[/] {category.__name__}: {message}", highlight=False, soft_wrap=True)


def fail(message: str) -> None:
    """Print one error line (no markup interpretation of the message)."""
    err.print("[red]error:[/] ", end="", highlight=False)
    err.print(message, markup=False, highlight=False, soft_wrap=True)


class Batch:
    """A batch command's ledger: a bad item is reported in one line and skipped, the good ones finish,
    and `finish` prints a summary table and exits 1 if any failed. An output error (full disk,
    read-only mount) stops the batch instead: every later item would fail the same way."""

    def __init__(self, what: str, total: int):
        self.what, self.total = what, total
        self.failed: dict[str, str] = {}

    def run(self, name: str, fn: Callable[[], T]) -> T | None:
        try:
            return fn()
        except OutputError:
            raise
        except RtgenError as e:
            self.record(name, e)
            return None

    def record(self, name: str, error: Exception) -> None:
        """Note a failed item and say so in one line at once."""
        self.failed[name] = str(error)
        fail(f"{error} (skipped)")

    def finish(self, done_message: str, quiet: bool = False) -> None:
        """Print the count (unless `quiet`: stdout holds JSON) and, if any failed, their table; exit 1."""
        ok = self.total - len(self.failed)
        if not quiet:
            out.print(f"{ok} of {self.total} {self.what} {done_message}")
        if not self.failed:
            return
        from rich.table import Table

        table = Table(title=f"{len(self.failed)} failed", title_justify="left")
        table.add_column(self.what.rstrip("s"), style="red", no_wrap=True)
        table.add_column("reason", overflow="fold")
        for name, reason in self.failed.items():
            table.add_row(name, reason)
        err.print(table)
        raise typer.Exit(1)


def preflight(outputs=(), output_files=(), inputs=()) -> None:
    """What a command checks before it imports PyTorch or reads anything (a second, not ten): each
    input path exists, and each output folder (or the folder of each output file) can be created and
    written. Otherwise one error line naming the path. Free space is checked later, once the command
    knows how much it will write."""
    from rtgen.core.atomic import check_can_create, check_writable
    from rtgen.core.errors import DataError

    for path in inputs:
        if path is not None and not Path(path).exists():
            raise DataError(path, "not found")
    for path in outputs:
        if path is not None:
            check_can_create(path)
    for path in output_files:
        if path is None:
            continue
        if Path(path).is_dir():
            raise OutputError(path, "cannot be written: it is a folder, and an output file was expected")
        folder = Path(path).parent
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir():
            raise OutputError(path, f"cannot be written: {folder} is a file, not a folder")
        check_writable(folder)


def aliases_option(what: str):
    """The `--aliases FILE` option of a command that reads DICOM `what` (patients, references)."""
    return typer.Option(None, "--aliases", help=f"DICOM {what}: a JSON/YAML file {{rtgen structure: [ROI names]}} "
                                                "extending the built-in table of ROI names (e.g. {PTV70: [Volume1]}).")


def rtdose_option():
    """The `--dose FILE ...` option of a command that reads DICOM patients (`dicom_options` applies it)."""
    return typer.Option(None, "--dose", help="A DICOM patient's RTDOSE to read as its dose where its folder holds "
                        "several (by default the one plan dose, DoseSummationType PLAN, is read and the others named "
                        "in a note); repeat for several patients.")


def dicom_options(aliases: Path | None, dose: list[Path] | None = None, roots=()) -> dict[str, tuple[str, ...]]:
    """`--aliases FILE` and `--dose FILE ...`, checked now, before any heavy import: each RTDOSE (inside
    one of `roots`, the folders the command reads) chosen for the rest of the command, and the alias
    table returned (a bad alias file fails in one line)."""
    if dose:
        from rtgen.data.sources.dicom import check_dose_files, choose_doses

        check_dose_files(dose, roots)
        choose_doses(dose)
    from rtgen.data.sources.dicom.names import load_aliases

    return load_aliases(aliases)


def user_errors(fn):
    """Turn RtgenError into one clear line on stderr and exit status 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        warnings.showwarning = _show_warning
        try:  # in a context of its own: what a command chooses for its reading (--dose) ends with it
            return contextvars.copy_context().run(fn, *args, **kwargs)
        except RtgenError as e:
            fail(str(e))
            raise typer.Exit(1) from None
        except OSError as e:  # a disk error outside rtgen's writers: still one line naming the file
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            fail(f"{where}{e.strerror or e}")
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
