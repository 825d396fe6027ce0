"""Writers: one predicted volume to disk in the format asked for, atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtgen.data.sources.nifti import write_nifti
from rtgen.data.sources.openkbp import write_dose_csv

DOSE_FORMATS = ("csv", "nifti")


def write_dose(out_dir: str | Path, patient_id: str, dose: np.ndarray, spacing, fmt: str = "csv",
               std: np.ndarray | None = None) -> Path:
    """`pt_N.csv` (OpenKBP submission format) or `pt_N.nii.gz`; the spread of several samples, when
    given, beside it as `pt_N_std.nii.gz`. Returns the dose file."""
    out_dir = Path(out_dir)
    if fmt == "csv":
        path = write_dose_csv(out_dir / f"{patient_id}.csv", dose)
    elif fmt == "nifti":
        path = write_nifti(out_dir / f"{patient_id}.nii.gz", dose, spacing)
    else:
        raise ValueError(f"format must be one of {DOSE_FORMATS}, got {fmt!r}")
    if std is not None:
        write_nifti(out_dir / f"{patient_id}_std.nii.gz", std, spacing)
    return path
