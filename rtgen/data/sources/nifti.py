"""NIfTI volumes with the voxel spacing in the affine (nibabel), and patients stored as a folder of them."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from rtgen.core.atomic import atomic_path, staged_dir
from rtgen.core.errors import DataError
from rtgen.core.structures import STRUCTURES
from rtgen.data.records import Patient
from rtgen.data.validate import check_grid, check_values


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


@contextlib.contextmanager
def _quiet_nibabel():
    logger = nib.imageglobals.logger
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def read_nifti(path: str | Path, kind: str | None = None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Return (array in its stored dtype, spacing in mm); with `kind` ("ct", "dose", "mask") the
    volume is also checked as rtgen.data.validate describes (3D, real, finite, in range)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "is not a regular file (a folder or a broken link?); expected a NIfTI file"
                        if path.exists() or path.is_symlink() else "file not found")
    try:
        with _quiet_nibabel():  # nibabel logs its header repairs to stderr; the checks below decide
            img = nib.load(str(path))
            arr = np.asanyarray(img.dataobj)
            zooms = img.header.get_zooms()
    except Exception as e:  # nibabel, gzip and zlib raise many types for corrupt or truncated files
        raise DataError(path, f"not a readable NIfTI file ({type(e).__name__}: {e})") from None
    arr = np.asarray(arr)
    if len(zooms) < 3 or arr.ndim < 3:
        raise DataError(path, f"has shape {arr.shape}; a 3D volume is expected")
    # the header stores float32: read back the shortest decimal it encodes (3.906, not 3.9059999), so a
    # patient has the same spacing, hence the same features and prediction, from NIfTI as from CSV
    spacing = tuple(float(str(np.float32(z))) for z in zooms[:3])
    if not all(np.isfinite(v) and v > 0 for v in spacing):
        raise DataError(path, f"voxel spacing {spacing} mm in the header must be three positive numbers")
    if kind is not None:
        check_grid(path, arr.shape)
        arr = check_values(path, arr, kind)
    return arr, spacing  # type: ignore[return-value]


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
    return folder.is_dir() and (folder / "possible_dose_mask.nii.gz").exists()


def read_nifti_patient(folder: str | Path, load_ct: bool = True, load_dose: bool = True) -> Patient:
    """A folder of NIfTI volumes on one grid; every volume checked as it is read."""
    folder = Path(folder)
    pdm, spacing = read_nifti(folder / "possible_dose_mask.nii.gz", "mask")

    def load(name, kind, dtype):
        path = folder / f"{name}.nii.gz"
        arr, _ = read_nifti(path, kind)
        check_grid(path, arr.shape, pdm.shape, "possible_dose_mask.nii.gz")  # any grid, but one grid per patient
        return (np.rint(arr) if kind == "ct" else arr).astype(dtype)

    def present(name):
        path = folder / f"{name}.nii.gz"
        return path.exists() or path.is_symlink()

    ct = load("ct", "ct", np.int16) if load_ct and present("ct") else None
    dose = load("dose", "dose", np.float32) if load_dose and present("dose") else None
    structures = {n: load(n, "mask", bool) for n in STRUCTURES if present(n)}
    return Patient(folder.name, ct, dose, pdm.astype(bool), structures, spacing)
