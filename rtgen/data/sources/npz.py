"""Fast cache of OpenKBP patients: one compressed .npz per patient.

Reading a cache gives arrays identical to reading the CSVs (same dtypes and values).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from rtgen.core.atomic import atomic_path
from rtgen.data.records import Patient
from rtgen.core.errors import DataError
from rtgen.core.structures import STRUCTURES

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
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "format" not in z.files or str(z["format"]) != NPZ_FORMAT:
                raise DataError(path, "not an rtgen patient cache (missing format tag)")
            structures = {n: z[f"structure_{n}"] for n in STRUCTURES if f"structure_{n}" in z.files}
            return Patient(
                id=str(z["id"]),
                ct=z["ct"] if load_ct and "ct" in z.files else None,
                dose=z["dose"] if load_dose and "dose" in z.files else None,
                possible_dose_mask=z["possible_dose_mask"],
                structures=structures,
                spacing=tuple(float(v) for v in z["spacing"]),  # type: ignore[arg-type]
            )
    except (OSError, zipfile.BadZipFile, ValueError, KeyError) as e:
        raise DataError(path, f"not a readable patient cache ({e})") from None
