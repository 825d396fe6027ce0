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


class ConfigError(RtgenError):
    """A config (YAML file, override or checkpoint config) with a wrong type, value or key; names the source."""

    def __init__(self, source: str | Path, problem: str):
        self.source, self.problem = str(source), problem
        super().__init__(f"{source}: {problem}")


class RtgenWarning(UserWarning):
    """Something was skipped or assumed; the result is still valid."""
