"""NIfTI volumes with the voxel spacing in the affine (nibabel), and patients stored as a folder of them."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from rtgen.core.atomic import atomic_path, staged_dir
from rtgen.core.errors import DataError
from rtgen.core.structures import STRUCTURES
from rtgen.data.records import Patient


def spacing_affine(spacing) -> np.ndarray:
    return np.diag([float(spacing[0]), float(spacing[1]), float(spacing[2]), 1.0])


def write_nifti(path: str | Path, volume: np.ndarray, spacing) -> Path:
    """Write `volume` atomically; booleans are stored as uint8."""
    path = Path(path)
    arr = np.asarray(volume)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    img = nib.Nifti1Image(arr, spacing_affine(spacing))
    img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def read_nifti(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Return (array in its stored dtype, spacing in mm)."""
    path = Path(path)
    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises many types for corrupt files
        raise DataError(path, f"not a readable NIfTI file ({e})") from None
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    return np.asarray(arr), spacing  # type: ignore[return-value]


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
        if arr.shape != pdm.shape:  # any grid, but one grid per patient
            raise DataError(folder / f"{name}.nii.gz", f"shape {arr.shape} differs from possible_dose_mask.nii.gz {pdm.shape}")
        return arr.astype(dtype)

    ct = load("ct", np.int16) if load_ct and (folder / "ct.nii.gz").is_file() else None
    dose = load("dose", np.float32) if load_dose and (folder / "dose.nii.gz").is_file() else None
    structures = {n: load(n, bool) for n in STRUCTURES if (folder / f"{n}.nii.gz").is_file()}
    return Patient(folder.name, ct, dose, pdm.astype(bool), structures, spacing)
