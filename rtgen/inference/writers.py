"""Writers: one predicted volume to disk in the format asked for, atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtgen.core.errors import DataError
from rtgen.data.sources.nifti import write_nifti
from rtgen.data.sources.openkbp import write_dose_csv

DOSE_FORMATS = ("csv", "nifti", "dicom")


def estimated_bytes(grid=(128, 128, 128), with_std: bool = False) -> int:
    """An upper bound on one patient's output, for the free-space check before prediction: a
    float32 volume uncompressed (a CSV of the nonzero voxels is smaller), twice with the spread."""
    n = 1
    for g in grid:
        n *= int(g)
    return 4 * n * (2 if with_std else 1) + 4096


def write_dose(out_dir: str | Path, patient_id: str, dose: np.ndarray, spacing, fmt: str = "csv",
               std: np.ndarray | None = None, source: str | Path | None = None, body: np.ndarray | None = None,
               dose_grid: float | None = 2.5, dose_margin: float = 10.0) -> Path:
    """`pt_N.csv` (OpenKBP submission format), `pt_N.nii.gz` or, for fmt "dicom", `pt_N_RTDOSE.dcm`:
    an RTDOSE on the frame of reference and study of `source`, the patient's DICOM folder (the dose
    must be on that CT's grid, as predictions are), on a dose grid of `dose_grid` mm around `body`
    (see `write_rtdose`). The spread of several samples, when given, beside it as `pt_N_std.nii.gz`.
    Returns the dose file."""
    out_dir = Path(out_dir)
    if fmt == "dicom":
        from rtgen.data.sources.dicom import is_dicom_patient_dir, write_rtdose

        if source is None or not is_dicom_patient_dir(source):
            raise DataError(source or out_dir, f"patient {patient_id}: --format dicom writes an RTDOSE on the "
                                               "patient's own DICOM CT, so the patient must be a DICOM folder "
                                               "(rtgen convert to-dicom makes one)")
        path = write_rtdose(out_dir / f"{patient_id}_RTDOSE.dcm", dose, source, body=body, grid_spacing=dose_grid,
                            margin=dose_margin)
    elif fmt == "csv":
        path = write_dose_csv(out_dir / f"{patient_id}.csv", dose)
    elif fmt == "nifti":
        path = write_nifti(out_dir / f"{patient_id}.nii.gz", dose, spacing)
    else:
        raise ValueError(f"format must be one of {DOSE_FORMATS}, got {fmt!r}")
    if std is not None:
        write_nifti(out_dir / f"{patient_id}_std.nii.gz", std, spacing)
    return path


def write_image(out_dir: str | Path, patient_id: str, volume: np.ndarray, affine: np.ndarray) -> Path:
    """`<patient>.nii.gz`: a synthetic image (float32) with the affine of the image it was predicted
    from, so it overlays that CT in any viewer. Written atomically."""
    import nibabel as nib

    from rtgen.core.atomic import atomic_path

    path = Path(out_dir) / f"{patient_id}.nii.gz"
    img = nib.Nifti1Image(np.asarray(volume, np.float32), np.asarray(affine, np.float64))
    img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path
