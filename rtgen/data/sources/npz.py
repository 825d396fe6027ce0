"""Fast cache of OpenKBP patients: one compressed .npz per patient.

Reading a cache gives arrays identical to reading the CSVs (same dtypes and values).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtgen.core.atomic import atomic_path
from rtgen.core.errors import DataError
from rtgen.core.structures import STRUCTURES
from rtgen.data.records import Patient
from rtgen.data.validate import check_grid, check_values

NPZ_FORMAT = "rtgen-openkbp-npz-1"


def write_npz(patient: Patient, path: str | Path) -> Path:
    arrays = {
        "format": np.array(NPZ_FORMAT),
        "id": np.array(patient.id),
        "spacing": np.asarray(patient.spacing, np.float64),
        "possible_dose_mask": patient.possible_dose_mask,
    }
    if patient.ct is not None:
        arrays["ct"] = patient.ct
    if patient.dose is not None:
        arrays["dose"] = patient.dose
    for name, mask in patient.structures.items():
        arrays[f"structure_{name}"] = mask
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return Path(path)


def read_npz(path: str | Path, load_ct: bool = True, load_dose: bool = True) -> Patient:
    """Read a cache; its arrays are checked like any other source's (a cache can be hand-made)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "format" not in z.files or str(z["format"]) != NPZ_FORMAT:
                raise DataError(path, "not an rtgen patient cache (missing format tag)")
            pdm = _checked(path, z, "possible_dose_mask", "mask", None)
            structures = {n: _checked(path, z, f"structure_{n}", "mask", pdm.shape).astype(bool)
                          for n in STRUCTURES if f"structure_{n}" in z.files}
            ct = _checked(path, z, "ct", "ct", pdm.shape).astype(np.int16) if load_ct and "ct" in z.files else None
            dose = (_checked(path, z, "dose", "dose", pdm.shape).astype(np.float32)
                    if load_dose and "dose" in z.files else None)
            spacing = tuple(float(v) for v in np.ravel(z["spacing"]))
            if len(spacing) != 3 or not all(np.isfinite(v) and v > 0 for v in spacing):
                raise DataError(path, f"spacing {spacing} must be three positive numbers (mm)")
            return Patient(id=str(z["id"]), ct=ct, dose=dose, possible_dose_mask=pdm.astype(bool),
                           structures=structures, spacing=spacing)  # type: ignore[arg-type]
    except DataError:
        raise
    except Exception as e:  # numpy, zipfile and zlib raise many types for corrupt or truncated caches
        raise DataError(path, f"not a readable patient cache ({type(e).__name__}: {e})") from None


def _checked(path: Path, z, key: str, kind: str, grid) -> np.ndarray:
    arr = z[key]
    where = Path(f"{path}[{key}]")
    check_grid(where, arr.shape, grid, "possible_dose_mask")
    return check_values(where, arr, kind)
