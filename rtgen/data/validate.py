"""The one validation layer every reader calls: a volume is checked once, where it is read.

Each check names the file and the first offending row (CSV) or voxel (arrays) and the rule it
breaks, so a physicist can open the file at that place. Commands never re-check: whatever a
reader returns is real-valued, finite and inside the physical range of its quantity.

Rules (docs/data.md lists the same):
- no complex values, no NaN or infinity;
- CT: within what int16 holds in HU, [-32768, 32767] (a CSV value of 99999 would wrap silently);
- dose: >= 0 Gy (values down to -0.001 Gy are rounding noise and set to 0) and <= 200 Gy;
- masks: only 0 and 1 (CSV masks: an empty value or 1 per listed voxel).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtgen.core.errors import DataError
from rtgen.core.limits import CT_HU_RANGE, DOSE_CEILING_GY, DOSE_NEGATIVE_TOLERANCE_GY

KINDS = ("ct", "dose", "mask")


def _where(values: np.ndarray, i: int, first_line: int | None) -> tuple[int | None, str]:
    """(line, text) locating flat element i: a CSV line when rows are lines, else a voxel index."""
    if first_line is not None:
        return first_line + i, ""
    idx = np.unravel_index(i, values.shape)
    return None, f"voxel {tuple(int(v) for v in idx)}: "


def _refuse(path, values, bad: np.ndarray, rule: str, first_line: int | None, shown=None) -> None:
    flat = np.flatnonzero(bad)
    if not flat.size:
        return
    i = int(flat[0])
    line, at = _where(values, i, first_line)
    value = np.ravel(values)[i] if shown is None else np.ravel(shown)[i]
    more = f" ({flat.size} values break this rule)" if flat.size > 1 else ""
    raise DataError(path, f"{at}value {_fmt(value)} {rule}{more}", line)


def _fmt(v) -> str:
    v = float(v)
    return f"{v:.6g}"


def check_real(path: str | Path, values: np.ndarray, what: str) -> None:
    """Refuse complex and non-numeric arrays (casting them would silently drop data)."""
    arr = np.asarray(values)
    if np.iscomplexobj(arr):
        raise DataError(path, f"{what} holds complex values ({arr.dtype}); a real-valued volume is expected")
    if arr.dtype.kind not in "biuf":
        raise DataError(path, f"{what} has data type {arr.dtype}; a numeric volume is expected")


def check_values(path: str | Path, values: np.ndarray, kind: str, first_line: int | None = None,
                 offset: float = 0.0) -> np.ndarray:
    """Check `values` (a volume, or one value per CSV row when `first_line` is the first row's line)
    for quantity `kind` and return them ready to store (doses: tiny negatives set to 0).

    `offset` is subtracted before the range check (OpenKBP stores CT as HU + 1024), while messages
    show the value as written in the file."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    arr = np.asarray(values)
    check_real(path, arr, kind)
    if kind == "mask":
        _refuse(path, arr, (arr != 0) & (arr != 1), "is not a mask value (masks hold only 0 and 1)", first_line)
        return arr
    _refuse(path, arr, ~np.isfinite(arr), "is not finite (NaN or infinite)", first_line)
    stored = arr - offset if offset else arr
    if kind == "ct":
        lo, hi = CT_HU_RANGE
        unit = f"{_fmt(offset)} + HU" if offset else "HU"
        _refuse(path, arr, (stored < lo) | (stored > hi),
                f"is outside the CT range that int16 stores, [{lo}, {hi}] HU (in the file's units, {unit})", first_line)
        return arr
    _refuse(path, arr, stored < -DOSE_NEGATIVE_TOLERANCE_GY, "is a negative dose (Gy)", first_line)
    _refuse(path, arr, stored > DOSE_CEILING_GY,
            f"is above the physical ceiling of {DOSE_CEILING_GY:g} Gy (a dose in cGy read as Gy?)", first_line)
    if arr.size and arr.min() < 0:
        arr = np.maximum(arr, 0)
    return arr


def check_grid(path: str | Path, shape: tuple[int, ...], expected: tuple[int, ...] | None = None,
               reference: str = "") -> None:
    """A volume is 3D and, where the record already has a grid, on that grid."""
    if len(shape) != 3:
        raise DataError(path, f"has shape {tuple(shape)}; a 3D volume is expected")
    if min(shape) < 1:
        raise DataError(path, f"has shape {tuple(shape)}; an empty volume")
    if expected is not None and tuple(shape) != tuple(expected):
        raise DataError(path, f"shape {tuple(shape)} differs from {reference or 'the grid'} {tuple(expected)}")
