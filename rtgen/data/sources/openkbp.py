"""Read and write OpenKBP patients in the published sparse-CSV layout.

Each CSV has the header ``,data``; the first column is a flat C-order index into the
128^3 grid, the second a value (CT: HU + 1024, dose: Gy) or empty (masks).
Files may be gzip-compressed (``.csv.gz``). Good files take the fast pandas path;
a file that fails it is re-scanned line by line only to name the offending line.
"""

from __future__ import annotations

import gzip
import re
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from rtgen.core.atomic import atomic_path
from rtgen.core.errors import DataError, RtgenWarning
from rtgen.core.structures import CT_OFFSET, GRID_SHAPE, STRUCTURES
from rtgen.data.records import Patient
from rtgen.data.validate import check_values

N_VOXELS = int(np.prod(GRID_SHAPE))
HEADER = ",data"
REQUIRED = ("ct", "possible_dose_mask", "voxel_dimensions")
KNOWN_STEMS = set(REQUIRED) | {"dose"} | set(STRUCTURES)
READ_ERRORS = (OSError, EOFError, zlib.error, UnicodeDecodeError)
"""What a truncated or corrupt (gzip) file raises while being read; each becomes one DataError."""


def unreadable(path: Path, e: Exception) -> DataError:
    if isinstance(e, (EOFError, zlib.error)) or "gzip" in str(e).lower():
        return DataError(path, f"truncated or corrupt compressed file ({e})")
    if isinstance(e, UnicodeDecodeError):
        return DataError(path, "is not a text file (undecodable bytes)")
    return DataError(path, f"cannot be read ({e.strerror if isinstance(e, OSError) and e.strerror else e})")


# ---------------------------------------------------------------- low-level CSV


def find_csv(folder: Path, stem: str) -> Path | None:
    """`stem.csv` or `stem.csv.gz`; a directory or other non-file under that name is an error, not
    an absent file (else a broken copy would make a labelled patient look unlabelled)."""
    found = []
    for suffix in (".csv", ".csv.gz"):
        p = folder / f"{stem}{suffix}"
        if p.exists() or p.is_symlink():
            if not p.is_file():
                raise DataError(p, "is not a regular file (a folder or a broken link?); expected a CSV file")
            found.append(p)
    if len(found) > 1:
        raise DataError(found[0], f"and {found[1].name} both hold {stem}; keep one")
    return found[0] if found else None


def _open_text(path: Path):
    return gzip.open(path, "rt") if path.name.endswith(".gz") else open(path)


def _check_header(path: Path) -> None:
    try:
        with _open_text(path) as f:
            first = f.readline().rstrip("\r\n")
    except READ_ERRORS as e:
        raise unreadable(path, e) from None
    if first != HEADER:
        raise DataError(path, f"wrong header {first!r}, expected {HEADER!r}", line=1)


def _diagnose(path: Path, has_values: bool) -> DataError:
    """Scan the file line by line to name the first malformed row (slow path, errors only)."""
    try:
        return _scan(path, has_values)
    except READ_ERRORS as e:
        return unreadable(path, e)


def _scan(path: Path, has_values: bool) -> DataError:
    with _open_text(path) as f:
        next(f, None)
        for lineno, raw in enumerate(f, start=2):
            line = raw.rstrip("\r\n")
            if not line.strip():
                return DataError(path, "empty row", lineno)
            parts = line.split(",")
            if len(parts) != 2:
                return DataError(path, f"malformed row {line!r}: expected 2 fields, found {len(parts)}", lineno)
            idx, val = parts
            if not re.fullmatch(r"\s*\d+\s*", idx):
                return DataError(path, f"non-numeric or non-integer index {idx!r}", lineno)
            if has_values:
                try:
                    float(val)
                except ValueError:
                    what = "missing value" if not val.strip() else f"non-numeric value {val!r}"
                    return DataError(path, what, lineno)
            elif val.strip() and val.strip() not in ("1", "1.0"):
                return DataError(path, f"value {val.strip()!r} in a mask: a mask lists the voxels inside, "
                                       "with an empty value or 1", lineno)
    return DataError(path, "could not be parsed as an OpenKBP CSV")


def read_sparse_csv(path: str | Path, kind: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Return (flat indices int64, values float64 or None for masks), validated for `kind`
    ("ct", "dose" or "mask": see rtgen.data.validate for the rules)."""
    path = Path(path)
    has_values = kind != "mask"
    _check_header(path)
    try:
        with warnings.catch_warnings():
            # pandas only warns when a row has extra fields; that is a malformed file
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(
                path, header=None, skiprows=1, names=["index", "value"], index_col=False, skip_blank_lines=False
            )
    except pd.errors.EmptyDataError:
        df = pd.DataFrame({"index": np.zeros(0, np.int64), "value": np.zeros(0)})
    except (pd.errors.ParserError, pd.errors.ParserWarning, ValueError, *READ_ERRORS):
        raise _diagnose(path, has_values) from None
    if len(df) == 0:
        return np.zeros(0, np.int64), (np.zeros(0) if has_values else None)
    idx_col, val_col = df["index"], df["value"]
    if idx_col.dtype.kind != "i" or val_col.dtype.kind not in "fi":
        raise _diagnose(path, has_values)
    idx = idx_col.to_numpy(np.int64)
    bad = np.flatnonzero((idx < 0) | (idx >= N_VOXELS))
    if bad.size:
        i = bad[0]
        raise DataError(path, f"index {idx[i]} out of range [0, {N_VOXELS})", int(i) + 2)
    order = np.argsort(idx, kind="stable")
    dup = np.flatnonzero(np.diff(idx[order]) == 0)
    if dup.size:
        i = order[dup[0] + 1]
        raise DataError(path, f"index {idx[i]} repeated (first at line {order[dup[0]] + 2})", int(i) + 2)
    val = val_col.to_numpy(np.float64)
    if not has_values:
        # the published format lists the voxels inside with an empty value; 1 means the same. Any
        # other value (0, 5) would still count as inside, so it is refused rather than guessed at.
        bad = np.flatnonzero(~np.isnan(val) & (val != 1))
        if bad.size:
            i = int(bad[0])
            raise DataError(path, f"value {_raw_value(path, i)!r} in a mask: a mask lists the voxels inside, "
                                  "with an empty value or 1", i + 2)
        return idx, None
    bad = np.flatnonzero(~np.isfinite(val))
    if bad.size:
        i = int(bad[0])
        raw = _raw_value(path, i)
        problem = "missing value" if not raw else f"non-finite value {raw!r} (NaN or infinite)"
        raise DataError(path, problem, i + 2)
    val = check_values(path, val, kind, first_line=2, offset=CT_OFFSET if kind == "ct" else 0.0)
    return idx, val


def _raw_value(path: Path, row: int) -> str:
    """The value field of data row `row` as written in the file (only called on errors)."""
    with _open_text(path) as f:  # the file parsed a moment ago, so it reads again
        for lineno, raw in enumerate(f):
            if lineno == row + 1:
                parts = raw.rstrip("\r\n").split(",", 1)
                return parts[1].strip() if len(parts) > 1 else ""
    return ""


def dense(idx: np.ndarray, values: np.ndarray | None, dtype) -> np.ndarray:
    out = np.zeros(N_VOXELS, dtype=dtype)
    out[idx] = True if values is None else values
    return out.reshape(GRID_SHAPE)


def read_spacing(path: str | Path) -> tuple[float, float, float]:
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot be read ({e})") from None
    tokens = [t for t in re.split(r"[\s,]+", text.strip()) if t]
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        raise DataError(path, f"voxel dimensions must be three positive numbers, found {tokens!r}") from None
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise DataError(path, f"voxel dimensions must be three positive numbers, found {tokens!r}")
    return tuple(values)  # type: ignore[return-value]


# ---------------------------------------------------------------- patients


def is_patient_dir(folder: Path) -> bool:
    return folder.is_dir() and find_csv(folder, "possible_dose_mask") is not None


def read_patient(folder: str | Path, load_ct: bool = True, load_dose: bool = True) -> Patient:
    """Read one patient folder in the published layout; raise DataError on any bad input."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "is not a folder")
    found = {s: find_csv(folder, s) for s in ("ct", "possible_dose_mask", "dose")}
    vox = folder / "voxel_dimensions.csv"
    if not any(found.values()) and not vox.exists():
        raise DataError(folder, "is not an OpenKBP patient folder (no ct.csv, possible_dose_mask.csv or voxel_dimensions.csv)")
    for stem in ("ct", "possible_dose_mask"):
        if found[stem] is None:
            raise DataError(folder / f"{stem}.csv", "missing required file")
    if not vox.is_file():
        raise DataError(vox, "missing required file")

    spacing = read_spacing(vox)
    ct = None
    if load_ct:
        idx, val = read_sparse_csv(found["ct"], "ct")
        ct = (dense(idx, val, np.float64) - CT_OFFSET).astype(np.int16)
    dose = None
    if load_dose and found["dose"] is not None:
        idx, val = read_sparse_csv(found["dose"], "dose")
        dose = dense(idx, val, np.float32)
    idx, _ = read_sparse_csv(found["possible_dose_mask"], "mask")
    pdm = dense(idx, None, bool)

    structures: dict[str, np.ndarray] = {}
    for name in STRUCTURES:
        p = find_csv(folder, name)
        if p is not None:
            idx, _ = read_sparse_csv(p, "mask")
            structures[name] = dense(idx, None, bool)
    for p in sorted(folder.iterdir()):
        stem = p.name.removesuffix(".gz").removesuffix(".csv")
        if p.name.endswith((".csv", ".csv.gz")) and stem not in KNOWN_STEMS:
            warnings.warn(f"{p}: unknown structure {stem!r} skipped", RtgenWarning, stacklevel=2)
    return Patient(id=folder.name, ct=ct, dose=dose, possible_dose_mask=pdm, structures=structures, spacing=spacing)


def write_patient(patient: Patient, folder: str | Path, compress: bool = False) -> Path:
    """Write a patient in the published layout (used for fixtures and round-trip tests)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".csv.gz" if compress else ".csv"
    if patient.ct is not None:
        _write_sparse(folder / f"ct{ext}", patient.ct.astype(np.float64) + CT_OFFSET, fmt="%.1f")
    if patient.dose is not None:
        _write_sparse(folder / f"dose{ext}", patient.dose, fmt="%.9g")
    _write_sparse(folder / f"possible_dose_mask{ext}", patient.possible_dose_mask, fmt=None)
    for name, mask in patient.structures.items():
        _write_sparse(folder / f"{name}{ext}", mask, fmt=None)
    with atomic_path(folder / "voxel_dimensions.csv") as tmp:
        tmp.write_text("".join(f"{v:.18e}\n" for v in patient.spacing))
    return folder


def _write_sparse(path: Path, volume: np.ndarray, fmt: str | None) -> None:
    flat = np.asarray(volume).ravel()
    idx = np.flatnonzero(flat)
    if fmt is None:
        body = "\n".join(f"{i}," for i in idx.tolist())
    else:
        vals = np.char.mod(fmt, flat[idx].astype(np.float64))
        body = "\n".join(f"{i},{v}" for i, v in zip(idx.tolist(), vals.tolist()))
    text = HEADER + "\n" + body + ("\n" if body else "")
    with atomic_path(path) as tmp:
        if path.name.endswith(".gz"):
            with gzip.open(tmp, "wt", compresslevel=9) as f:
                f.write(text)
        else:
            tmp.write_text(text)


# ---------------------------------------------------------------- submissions


def write_dose_csv(path: str | Path, dose: np.ndarray) -> Path:
    """Write a prediction in the challenge's submission format: ``pt_N.csv``, the nonzero voxels."""
    dose = np.asarray(dose)
    if dose.shape != GRID_SHAPE:
        raise DataError(path, f"dose has shape {dose.shape}, expected {GRID_SHAPE}")
    if not np.all(np.isfinite(dose)):
        raise DataError(path, "dose contains NaN or infinite values; refusing to write")
    _write_sparse(Path(path), dose.astype(np.float32), fmt="%.9g")
    return Path(path)


def read_dose_csv(path: str | Path) -> np.ndarray:
    """Read a dose in submission format (or a patient's dose.csv) into a dense float32 volume."""
    idx, val = read_sparse_csv(path, "dose")
    return dense(idx, val, np.float32)


def patient_number(name: str) -> tuple[int, str]:
    m = re.search(r"(\d+)", name)
    return (int(m.group(1)) if m else 1 << 30, name)
