"""RTDOSE reading: the dose grid of an RTDOSE file (pixel values times DoseGridScaling, frames placed
by GridFrameOffsetVector) in rtgen's axis order, and its trilinear resampling onto a CT grid."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from rtgen.core.errors import DataError, RtgenWarning
from rtgen.data.sources.dicom.ct import read_pixels
from rtgen.data.sources.dicom.geometry import (
    TOL,
    CtReference,
    apply_inplane,
    canonical_inplane,
)
from rtgen.data.sources.dicom.tags import floats, integer, number, reading, text


@dataclass
class DoseGrid:
    """An RTDOSE in rtgen's axis convention: values[i, j, k] at (x0 + j dx, y0 + i dy, z[k]), z decreasing."""

    values: np.ndarray  # float32, DoseUnits (Gy unless RELATIVE)
    origin_xy: tuple[float, float]
    spacing_yx: tuple[float, float]
    z: np.ndarray  # slice positions, decreasing (head to feet)
    units: str
    summation: str
    frame_of_reference_uid: str


def _frame_offsets(path: Path, ds, frames: int, ipp: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """GridFrameOffsetVector as offsets from the first frame (absolute positions are converted)."""
    if frames == 1:
        return np.zeros(1)
    if "GridFrameOffsetVector" not in ds:
        raise DataError(path, "multi-frame RTDOSE without GridFrameOffsetVector")
    gfov = floats(ds, "GridFrameOffsetVector", path)
    if gfov.size != frames:
        raise DataError(path, f"GridFrameOffsetVector has {gfov.size} values for {frames} frames")
    if abs(gfov[0]) > TOL and np.isclose(gfov[0], ipp @ normal, atol=TOL):
        gfov = gfov - gfov[0]  # absolute positions (the older convention): make them offsets
    steps = np.diff(gfov)
    if not (np.all(steps > 0) or np.all(steps < 0)):
        raise DataError(path, "GridFrameOffsetVector is not strictly monotonic")
    return gfov


def read_rtdose(path: str | Path) -> DoseGrid:
    """Read an RTDOSE: pixel values times DoseGridScaling, frames placed by GridFrameOffsetVector."""
    path = Path(path)
    ds, arr = read_pixels(path)
    with reading(path):
        frames = integer(ds, "NumberOfFrames", path, default=1, minimum=1)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[0] != frames:
            raise DataError(path, f"pixel data of shape {arr.shape}, NumberOfFrames says {frames} frames")
        scaling = number(ds, "DoseGridScaling", path, default=1.0, positive=True)
        ipp = floats(ds, "ImagePositionPatient", path, 3)
        iop = floats(ds, "ImageOrientationPatient", path, 6)
        spacing = floats(ds, "PixelSpacing", path, 2, positive=True)
        rows, cols = integer(ds, "Rows", path, minimum=1), integer(ds, "Columns", path, minimum=1)
        normal = np.cross(iop[:3], iop[3:])
        transpose, flip_r, flip_c, (dy, dx), (x_off, y_off) = canonical_inplane(path, iop, spacing, rows, cols)
        z = ipp[2] + _frame_offsets(path, ds, frames, ipp, normal) * normal[2]
        units = text(ds, "DoseUnits", path, "GY").upper()
        summation = text(ds, "DoseSummationType", path)
        frame_of_reference = text(ds, "FrameOfReferenceUID", path)
    values = np.moveaxis(arr.astype(np.float64) * scaling, 0, -1)  # (rows, cols, frames)
    values = apply_inplane(values, transpose, flip_r, flip_c)
    order = np.argsort(-z, kind="stable")
    if units != "GY":
        warnings.warn(f"{path}: DoseUnits {units}, not GY; values are used as they are", RtgenWarning, stacklevel=2)
    return DoseGrid(np.ascontiguousarray(values[:, :, order], dtype=np.float32), (ipp[0] + x_off, ipp[1] + y_off),
                    (dy, dx), z[order], units, summation, frame_of_reference)


def read_rtdose_on_grid(path: str | Path, grid: tuple[int, ...], ct: CtReference | str | Path | None = None
                        ) -> np.ndarray:
    """An RTDOSE as a volume on a patient's grid, in rtgen's axis order: resampled onto the CT of `ct`
    (a CtReference or the patient's DICOM folder) when given, as rtgen's own RTDOSEs on a dose grid
    need; without `ct`, an RTDOSE already on a grid of shape `grid`, else DataError."""
    d = read_rtdose(path)
    if ct is not None:
        if not isinstance(ct, CtReference):
            from rtgen.data.sources.dicom.read import read_ct_reference

            ct = read_ct_reference(ct)
        if d.frame_of_reference_uid and d.frame_of_reference_uid != ct.frame_of_reference_uid:
            raise DataError(path, f"RTDOSE on frame of reference {d.frame_of_reference_uid}, the CT's is "
                                  f"{ct.frame_of_reference_uid}")
        if ct.shape != tuple(grid):
            raise DataError(path, f"the CT grid {ct.shape} differs from the reference grid {tuple(grid)}")
        return dose_on_ct_grid(d, ct)
    if d.values.shape != tuple(grid):
        raise DataError(path, f"RTDOSE grid {d.values.shape} differs from the reference grid {tuple(grid)} "
                              "(resampling it needs the patient's DICOM CT as the reference)")
    return d.values


def dose_on_ct_grid(dose: DoseGrid, ref: CtReference) -> np.ndarray:
    """Trilinear resampling (scipy.ndimage.map_coordinates, one CT slice at a time to bound memory)
    of an RTDOSE onto the CT grid; 0 outside the dose grid."""
    ny, nx, _ = ref.shape
    dy, dx, _ = ref.spacing
    ox, oy, _ = ref.origin
    fi = (oy + np.arange(ny) * dy - dose.origin_xy[1]) / dose.spacing_yx[0]
    fj = (ox + np.arange(nx) * dx - dose.origin_xy[0]) / dose.spacing_yx[1]
    zs = ref.slice_z()
    dz_ascending = dose.z[::-1]
    out = np.zeros(ref.shape, np.float32)
    nf = dose.values.shape[2]
    ii, jj = np.meshgrid(fi, fj, indexing="ij")
    for k, zk in enumerate(zs):
        if nf == 1:
            if abs(zk - dose.z[0]) > max(ref.spacing[2] / 2, TOL):
                continue
            fk = 0.0
        else:
            if zk > dose.z[0] + TOL or zk < dose.z[-1] - TOL:
                continue
            fk = (nf - 1) - float(np.interp(zk, dz_ascending, np.arange(nf)))
        coords = np.stack([ii, jj, np.full_like(ii, fk)])
        out[:, :, k] = ndimage.map_coordinates(dose.values, coords, order=1, mode="constant", cval=0.0)
    return np.maximum(out, 0)
