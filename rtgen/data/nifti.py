"""NIfTI volumes with the OpenKBP voxel spacing in the affine (nibabel)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from rtgen.atomic import atomic_path
from rtgen.errors import DataError


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
