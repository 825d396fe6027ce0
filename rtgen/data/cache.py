"""Fast caches of OpenKBP patients: one compressed .npz per patient, or a folder of NIfTI files.

Reading a cache gives arrays identical to reading the CSVs (same dtypes and values).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from rtgen.atomic import atomic_path, staged_dir
from rtgen.data.nifti import read_nifti, write_nifti
from rtgen.data.openkbp import Patient
from rtgen.errors import DataError
from rtgen.structures import GRID_SHAPE, STRUCTURES

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


def write_nifti_patient(patient: Patient, folder: str | Path) -> Path:
    """One NIfTI per array: ct (int16 HU), dose (float32 Gy), masks (uint8)."""
    with staged_dir(folder) as stage:
        if patient.ct is not None:
            write_nifti(stage / "ct.nii.gz", patient.ct, patient.spacing)
        if patient.dose is not None:
            write_nifti(stage / "dose.nii.gz", patient.dose, patient.spacing)
        write_nifti(stage / "possible_dose_mask.nii.gz", patient.possible_dose_mask, patient.spacing)
        for name, mask in patient.structures.items():
            write_nifti(stage / f"{name}.nii.gz", mask, patient.spacing)
    return Path(folder)


def is_nifti_patient_dir(folder: Path) -> bool:
    return folder.is_dir() and (folder / "possible_dose_mask.nii.gz").is_file()


def read_nifti_patient(folder: str | Path, load_ct: bool = True, load_dose: bool = True) -> Patient:
    folder = Path(folder)
    pdm, spacing = read_nifti(folder / "possible_dose_mask.nii.gz")

    def load(name, dtype):
        arr, _ = read_nifti(folder / f"{name}.nii.gz")
        if arr.shape != GRID_SHAPE:
            raise DataError(folder / f"{name}.nii.gz", f"shape {arr.shape}, expected {GRID_SHAPE}")
        return arr.astype(dtype)

    ct = load("ct", np.int16) if load_ct and (folder / "ct.nii.gz").is_file() else None
    dose = load("dose", np.float32) if load_dose and (folder / "dose.nii.gz").is_file() else None
    structures = {n: load(n, bool) for n in STRUCTURES if (folder / f"{n}.nii.gz").is_file()}
    return Patient(folder.name, ct, dose, pdm.astype(bool), structures, spacing)
