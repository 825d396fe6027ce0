"""Reading the tags of one DICOM file without a crash: every malformed file becomes ONE `DataError`.

pydicom parses values lazily, so a corrupted file does not fail in `dcmread` but later, wherever a
tag is first touched, with whatever Python raises there (AttributeError for a missing tag,
ValueError for a DS of '3.906^1.25', NotImplementedError for an unknown VR, OSError for a broken
sequence ...). Readers therefore (1) fetch the tags they need through the typed getters below,
which name the tag and the bad value, and (2) interpret a file inside `reading(path)`, the one
backstop that turns anything else a malformed tag raises into `DataError(path, ...)`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from rtgen.core.errors import DataError, RtgenError

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
STUDY_COMPONENT_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"  # the conventional SOP class for referencing a study
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR

MALFORMED = (AttributeError, KeyError, ValueError, TypeError, IndexError, ArithmeticError, NotImplementedError,
             struct.error, EOFError, OSError)
"""What interpreting a malformed file's tags raises (pydicom's lazy parsing or our own arithmetic on
them), besides pydicom's own error classes (see `is_malformed`). The file is already in memory, so an
OSError here is pydicom failing to parse a sequence, not a disk error."""


def is_malformed(e: BaseException) -> bool:
    """Whether `e`, raised while interpreting a file's tags, means the file is malformed: one of
    MALFORMED or one of pydicom's own errors (BytesLengthException for a value of the wrong length ...)."""
    return isinstance(e, MALFORMED) or type(e).__module__.split(".")[0] == "pydicom"


def _short(text: object, limit: int = 200) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[:limit] + "..."


def describe(e: BaseException) -> str:
    """One line for an exception raised while interpreting a tag."""
    if isinstance(e, AttributeError) and getattr(e, "name", None) and type(getattr(e, "obj", None)).__name__ in (
            "Dataset", "FileDataset"):
        return f"missing {e.name}"
    return f"malformed tag ({type(e).__name__}: {_short(e) or 'no detail'})"


@contextmanager
def reading(path: str | Path, where: str = "") -> Iterator[None]:
    """Interpret one file's tags: an exception a malformed tag raises becomes DataError(path, problem),
    prefixed by `where` (e.g. "ROIContourSequence item 2"). rtgen's own errors pass unchanged."""
    try:
        yield
    except RtgenError:
        raise
    except Exception as e:  # filtered by is_malformed: anything else propagates
        if not is_malformed(e):
            raise
        raise DataError(path, f"{where}: {describe(e)}" if where else describe(e)) from None


def read_file(path: Path, **kwargs):
    """pydicom.dcmread(path, force=True, ...), or DataError naming the file (pydicom raises many types)."""
    import pydicom

    try:
        return pydicom.dcmread(path, force=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - the parser's own error types vary with the damage
        raise DataError(path, f"not a readable DICOM file ({type(e).__name__}: {_short(e)})") from None


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def _raw_text(ds, key: str) -> str:
    """A tag's value as stored (for messages about a value pydicom cannot convert)."""
    try:
        raw = ds.get_item(key)
        value = getattr(raw, "value", raw)
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        return _short(str(value).strip(), 60)
    except Exception:  # noqa: BLE001 - only for a message
        return "?"


def _get(ds, key: str, path: Path, where: str):
    """The converted value of `key` (None if absent); DataError if pydicom cannot convert it."""
    try:
        return ds.get(key)
    except Exception as e:  # filtered by is_malformed: anything else propagates
        if isinstance(e, RtgenError) or not is_malformed(e):
            raise
        raise DataError(path, f"{_prefix(where)}{key} {_raw_text(ds, key)!r} cannot be read "
                              f"({type(e).__name__}: {_short(e, 120)})") from None


def _missing(v) -> bool:
    return v is None or (isinstance(v, (str, bytes)) and not v.strip()) or (
        hasattr(v, "__len__") and not isinstance(v, (str, bytes)) and len(v) == 0)


def required(ds, key: str, path: Path, where: str = ""):
    """The value of a tag that must be there and not empty."""
    v = _get(ds, key, path, where)
    if _missing(v):
        raise DataError(path, f"{_prefix(where)}missing {key}")
    return v


def text(ds, key: str, path: Path, default: str = "", where: str = "") -> str:
    """A tag as a string (`default` when absent or empty)."""
    v = _get(ds, key, path, where)
    return default if _missing(v) else str(v).strip()


def uid(ds, key: str, path: Path, where: str = "") -> str:
    """A required UID."""
    return str(required(ds, key, path, where)).strip()


def floats(ds, key: str, path: Path, count: int | None = None, where: str = "", default=None,
           positive: bool = False) -> np.ndarray:
    """A numeric tag (DS, FD, IS ...) as a float64 array: finite numbers, `count` of them if given,
    > 0 if `positive`. Absent or empty: `default` (as an array) if given, else DataError."""
    v = _get(ds, key, path, where)
    if _missing(v):
        if default is None:
            raise DataError(path, f"{_prefix(where)}missing {key}")
        return np.atleast_1d(np.asarray(default, np.float64))
    from pydicom.multival import MultiValue

    items = list(v) if isinstance(v, (list, tuple, MultiValue)) else [v]
    shown = "\\".join(str(x) for x in items)
    try:
        arr = np.array([float(x) for x in items], np.float64)
    except (ValueError, TypeError, OverflowError):
        raise DataError(path, f"{_prefix(where)}{key} {_short(shown, 60)!r} is not a number") from None
    if count is not None and arr.size != count:
        raise DataError(path, f"{_prefix(where)}{key} has {arr.size} values, expected {count}")
    if not np.all(np.isfinite(arr)):
        raise DataError(path, f"{_prefix(where)}{key} {_short(shown, 60)!r} is not finite")
    if positive and not np.all(arr > 0):
        raise DataError(path, f"{_prefix(where)}{key} {_short(shown, 60)!r} must be positive")
    return arr


def number(ds, key: str, path: Path, where: str = "", default: float | None = None, positive: bool = False) -> float:
    """One numeric value (see `floats`)."""
    return float(floats(ds, key, path, 1, where, default, positive)[0])


def integer(ds, key: str, path: Path, where: str = "", default: int | None = None, minimum: int | None = None) -> int:
    """One integer value (IS, US ...), at least `minimum` if given."""
    v = number(ds, key, path, where, default)
    if v != int(v) or abs(v) > 2**31:
        raise DataError(path, f"{_prefix(where)}{key} {v:g} is not an integer")
    if minimum is not None and v < minimum:
        raise DataError(path, f"{_prefix(where)}{key} is {int(v)}, expected at least {minimum}")
    return int(v)


def sequence(ds, key: str, path: Path, where: str = "") -> list:
    """The items of a sequence tag ([] when absent); DataError if the tag is not a sequence."""
    from pydicom.sequence import Sequence

    v = _get(ds, key, path, where)
    if v is None or (isinstance(v, (str, bytes)) and not v):
        return []
    if not isinstance(v, Sequence):
        raise DataError(path, f"{_prefix(where)}{key} is not a sequence")
    return list(v)
