"""The geometry shared by every DICOM reader and writer: `CtReference` (a CT's grid, position and
UIDs) and the in-plane orientation handling that brings an axis-aligned axial image to rtgen's
axis order (see the package docstring). Pure numbers: the tags were read and checked by the caller."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtgen.core.errors import DataError

TOL = 1e-3  # mm / direction cosine tolerance


@dataclass(frozen=True)
class CtReference:
    """What a DICOM writer needs to put a volume on a CT's frame of reference (see the package
    docstring for the axis convention): the grid, its position and the UIDs to reference."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # (dy, dx, dz) mm
    origin: tuple[float, float, float]  # patient (x, y, z) mm of voxel [0, 0, 0]; z is the top (head) slice
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    patient_id: str = "rtgen"
    patient_name: str = "rtgen"
    sop_instance_uids: tuple[str, ...] = ()  # CT slice k's SOPInstanceUID (for contour image references)
    structure_set_uid: str | None = None  # an RTSTRUCT on this CT, if any
    study_date: str = ""
    study_time: str = ""
    study_id: str = ""
    accession_number: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    anonymized: bool = False  # fresh identifiers (identity.anonymized): written with PatientIdentityRemoved YES

    def slice_z(self) -> np.ndarray:
        return self.origin[2] - np.arange(self.shape[2]) * self.spacing[2]

    @classmethod
    def new(cls, shape, spacing, origin=None, patient_id: str = "rtgen", patient_name: str | None = None
            ) -> CtReference:
        """Fresh UIDs, centred on (0, 0, 0) unless an origin is given (for writing a non-DICOM patient)."""
        from pydicom.uid import generate_uid

        shape = tuple(int(n) for n in shape)
        dy, dx, dz = (float(s) for s in spacing)
        if origin is None:
            origin = (-(shape[1] - 1) * dx / 2, -(shape[0] - 1) * dy / 2, (shape[2] - 1) * dz / 2)
        now = _dt.datetime.now()
        return cls(shape, (dy, dx, dz), tuple(float(o) for o in origin), generate_uid(), generate_uid(),
                   generate_uid(), patient_id, patient_name or patient_id,
                   tuple(generate_uid() for _ in range(shape[2])), None, now.strftime("%Y%m%d"),
                   now.strftime("%H%M%S"), "1")


def canonical_inplane(path: Path, orientation, pixel_spacing, rows: int, cols: int):
    """How to bring an axis-aligned axial image (rows, cols) to rtgen's (+y, +x) order.

    `orientation` (6 direction cosines) and `pixel_spacing` (between rows, between columns) are
    numbers already checked by the caller; DataError names `path` for an oblique or non-axial image.
    Returns (transpose, flip_rows, flip_cols, (dy, dx), (x_offset, y_offset)) where the offsets are
    added to ImagePositionPatient to get the position of the canonical pixel [0, 0].
    """
    iop = np.asarray(orientation, np.float64).ravel()
    if iop.size != 6:
        raise DataError(path, f"ImageOrientationPatient has {iop.size} values, expected 6")
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    axis_aligned = all(np.isclose(np.abs(v).max(), 1, atol=TOL) and np.isclose(np.abs(v).sum(), 1, atol=2 * TOL)
                       for v in (row_cos, col_cos))
    if not axis_aligned:
        raise DataError(path, f"oblique orientation {list(iop)} is not supported (axis-aligned axial series only)")
    if not np.isclose(abs(normal[2]), 1, atol=TOL):
        raise DataError(path, f"orientation {list(iop)} is not axial (slice normal {list(normal.round(3))})")
    d_row, d_col = float(pixel_spacing[0]), float(pixel_spacing[1])  # between rows, between columns
    transpose = abs(col_cos[1]) < 0.5  # rows run along x: the image is transposed
    if not transpose:
        y_step, x_step = col_cos[1] * d_row, row_cos[0] * d_col
        ny, nx = rows, cols
    else:
        y_step, x_step = row_cos[1] * d_col, col_cos[0] * d_row
        ny, nx = cols, rows
    x_off = min(0.0, (nx - 1) * x_step)
    y_off = min(0.0, (ny - 1) * y_step)
    return transpose, y_step < 0, x_step < 0, (float(abs(y_step)), float(abs(x_step))), (float(x_off), float(y_off))


def apply_inplane(img: np.ndarray, transpose: bool, flip_rows: bool, flip_cols: bool) -> np.ndarray:
    """(rows, cols[, frames]) -> canonical (y, x[, frames])."""
    if transpose:
        img = np.swapaxes(img, 0, 1)
    if flip_rows:
        img = img[::-1]
    if flip_cols:
        img = img[:, ::-1]
    return img
