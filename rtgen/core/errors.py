"""One exception family for bad input, so the CLI can print one clear line instead of a traceback."""

from __future__ import annotations

from pathlib import Path


class RtgenError(Exception):
    """Base class for errors a user can fix (bad input, missing file, wrong model)."""


class DataError(RtgenError):
    """Malformed or missing data; names the file and, where it applies, the line."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None):
        self.path = Path(path)
        self.problem = problem
        self.line = line
        where = f"{self.path}" + (f", line {line}" if line is not None else "")
        super().__init__(f"{where}: {problem}")


class OutputError(DataError):
    """An output that cannot be written (path under a file, read-only mount, full disk, I/O error).

    Batch commands stop on it rather than go on: the next patient would fail the same way."""


class ConfigError(RtgenError):
    """A config (YAML file, override or checkpoint config) with a wrong type, value or key; names the source."""

    def __init__(self, source: str | Path, problem: str):
        self.source, self.problem = str(source), problem
        super().__init__(f"{source}: {problem}")


class ValueRangeError(RtgenError, ValueError):
    """A number outside what the quantity can physically be (a dose of 1e6 Gy, a NaN in a dose).

    Also a ValueError, so code that validates numbers with `except ValueError` still catches it."""


class RtgenWarning(UserWarning):
    """Something was skipped or assumed; the result is still valid."""


class RtgenNote(RtgenWarning):
    """A choice rtgen made that the user should see (which of several files it read); the CLI prints it
    as a note rather than a warning."""
