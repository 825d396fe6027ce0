"""Writing DICOM RT: a CT series, an RTSTRUCT (one ROI per mask) and an RTDOSE on a `CtReference`,
and a whole `Patient` as a folder of them, so the treatment planning system can import rtgen's
output on the CT's frame of reference. Files are written atomically (a staged folder for a patient)."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from rtgen.core.atomic import atomic_path, staged_dir
from rtgen.core.errors import DataError
from rtgen.core.structures import TARGETS
from rtgen.data.records import Patient
from rtgen.data.sources.dicom.geometry import CtReference
from rtgen.data.sources.dicom.identity import DEIDENTIFICATION_METHOD, anonymized, valid_identity
from rtgen.data.sources.dicom.names import BODY
from rtgen.data.sources.dicom.raster import mask_contours
from rtgen.data.sources.dicom.tags import (
    CT_IMAGE_STORAGE,
    RT_DOSE_STORAGE,
    RT_PLAN_STORAGE,
    RT_STRUCTURE_SET_STORAGE,
    STUDY_COMPONENT_MANAGEMENT,
)

_INTERPRETED_TYPE = {**{t: "PTV" for t in TARGETS}, BODY: "EXTERNAL"}
_COLOURS = [(255, 0, 0), (255, 128, 0), (255, 255, 0), (0, 200, 255), (0, 255, 0), (255, 0, 255),
            (128, 0, 255), (0, 128, 128), (200, 150, 100), (150, 150, 255), (0, 255, 128)]


def _base_dataset(ref: CtReference, sop_class: str, sop_uid: str, modality: str, series_uid: str,
                  series_number: int, description: str, content_date: bool = True):
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"RTGEN_{pydicom.__version__}"[:16]
    ds = Dataset()
    ds.file_meta = meta
    now = _dt.datetime.now()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.StudyDate, ds.StudyTime = ref.study_date, ref.study_time
    if content_date:  # part of the image modules (CT, RTDOSE), not of the RT Structure Set IOD
        ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.AccessionNumber = ref.accession_number
    ds.Modality = modality
    ds.Manufacturer = "rtgen"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = description
    ds.OperatorsName = ""  # type 2 in the RT Series module: present, empty (no operator)
    ref = valid_identity(ref)  # read values were checked (with a warning); a caller's invalid ones are dropped too
    ds.PatientName = ref.patient_name
    ds.PatientID = ref.patient_id
    ds.PatientBirthDate = ref.patient_birth_date
    ds.PatientSex = ref.patient_sex
    if ref.anonymized:
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    ds.StudyInstanceUID = ref.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = ref.study_id
    ds.SeriesNumber = series_number
    ds.FrameOfReferenceUID = ref.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    return ds


def _save(ds, path: Path) -> Path:
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def write_ct_series(ct: np.ndarray, ref: CtReference, folder: Path) -> list[Path]:
    """One CT file per axial slice: int16 stored values with RescaleIntercept (HU + 1024 stored when it fits)."""
    ct = np.asarray(ct)
    if ct.shape != ref.shape:
        raise DataError(folder, f"CT shape {ct.shape} differs from the reference grid {ref.shape}")
    intercept = -1024 if int(ct.max(initial=0)) + 1024 <= np.iinfo(np.int16).max else 0
    stored = (ct.astype(np.int32) - intercept).astype("<i2")
    dy, dx, dz = ref.spacing
    ox, oy, _ = ref.origin
    paths = []
    for k, z in enumerate(ref.slice_z()):
        ds = _base_dataset(ref, CT_IMAGE_STORAGE, ref.sop_instance_uids[k], "CT", ref.series_uid, 1, "rtgen CT")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientPosition = "HFS"
        ds.InstanceNumber = k + 1
        ds.AcquisitionNumber = 1  # type 2 (CT Image); one acquisition
        # Laterality (type 2C, General Series) is needed unless ImageLaterality is sent: U, unpaired,
        # as an axial CT of the body is (an empty Laterality would mean "unknown")
        ds.ImageLaterality = "U"
        ds.ImagePositionPatient = [_ds(ox), _ds(oy), _ds(z)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = _ds(z)
        ds.SliceThickness = _ds(dz)
        ds.PixelSpacing = [_ds(dy), _ds(dx)]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(ref.shape[0]), int(ref.shape[1])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercept, 1, "HU"
        ds.KVP = ""
        ds.PixelData = np.ascontiguousarray(stored[:, :, k]).tobytes()
        paths.append(_save(ds, folder / f"CT_{k + 1:04d}.dcm"))
    return paths


def _ds(v: float) -> str:
    """A DS value (16 characters at most) with sub-micrometre precision."""
    s = f"{float(v):.6f}".rstrip("0").rstrip(".")
    return s if len(s) <= 16 else f"{float(v):.10g}"


def write_rtstruct(structures: Mapping[str, np.ndarray], ref: CtReference, path: Path,
                   sop_uid: str | None = None) -> Path:
    """An RTSTRUCT on the CT of `ref`: one ROI per mask, contours per slice in patient mm."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    sop_uid = sop_uid or generate_uid()
    ds = _base_dataset(ref, RT_STRUCTURE_SET_STORAGE, sop_uid, "RTSTRUCT", generate_uid(), 2, "rtgen structures",
                       content_date=False)
    ds.StructureSetLabel = "rtgen"
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    contour_images = []
    for uid in ref.sop_instance_uids:
        img = Dataset()
        img.ReferencedSOPClassUID = CT_IMAGE_STORAGE
        img.ReferencedSOPInstanceUID = uid
        contour_images.append(img)
    ser = Dataset()
    ser.SeriesInstanceUID = ref.series_uid
    ser.ContourImageSequence = contour_images
    study = Dataset()
    study.ReferencedSOPClassUID = STUDY_COMPONENT_MANAGEMENT
    study.ReferencedSOPInstanceUID = ref.study_uid
    study.RTReferencedSeriesSequence = [ser]
    rfor = Dataset()
    rfor.FrameOfReferenceUID = ref.frame_of_reference_uid
    rfor.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [rfor]
    dy, dx, _ = ref.spacing
    ox, oy, _ = ref.origin
    zs = ref.slice_z()
    rois, contours, observations = [], [], []
    for number, (name, mask) in enumerate(structures.items(), start=1):
        mask = np.asarray(mask, bool)
        if mask.shape != ref.shape:
            raise DataError(path, f"structure {name}: shape {mask.shape} differs from the CT grid {ref.shape}")
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = ref.frame_of_reference_uid
        roi.ROIName = "External" if name == BODY else name
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        rois.append(roi)
        seq = []
        for k in np.flatnonzero(mask.any(axis=(0, 1))):
            for poly in mask_contours(mask[:, :, k]):
                c = Dataset()
                img = Dataset()
                img.ReferencedSOPClassUID = CT_IMAGE_STORAGE
                img.ReferencedSOPInstanceUID = ref.sop_instance_uids[k]
                c.ContourImageSequence = [img]
                c.ContourGeometricType = "CLOSED_PLANAR"
                c.NumberOfContourPoints = len(poly)
                xyz = np.c_[ox + poly[:, 1] * dx, oy + poly[:, 0] * dy, np.full(len(poly), zs[k])]
                c.ContourData = [_ds(v) for v in np.round(xyz, 4).ravel()]
                seq.append(c)
        rc = Dataset()
        rc.ROIDisplayColor = list(_COLOURS[(number - 1) % len(_COLOURS)])
        rc.ReferencedROINumber = number
        if seq:  # an empty structure keeps its ROI but has no ContourSequence (an empty one is not allowed)
            rc.ContourSequence = seq
        contours.append(rc)
        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.ROIObservationLabel = "PossibleDoseMask" if name == BODY else name
        obs.RTROIInterpretedType = _INTERPRETED_TYPE.get(name, "ORGAN")
        obs.ROIInterpreter = ""
        observations.append(obs)
    ds.StructureSetROISequence = rois
    ds.ROIContourSequence = contours
    ds.RTROIObservationsSequence = observations
    return _save(ds, path)


# DoseSummationType without a plan. Every Defined Term of PS3.3 C.8.8.3 presupposes one: PLAN,
# MULTI_PLAN, FRACTION, BEAM, BRACHY, the *_SESSION terms and CONTROL_POINT require a
# ReferencedRTPlanSequence, RECORD a ReferencedTreatmentRecordSequence. A predicted dose has neither,
# so it says what it is with a term of its own (Defined Terms may be extended; dciodvfy reports it as
# an unrecognised term, a warning) rather than claim a plan it cannot reference. With an RTPLAN in
# the patient's folder, the dose is that plan's (PLAN, referencing it).
PREDICTED = "PREDICTED"
IMPORTED = "IMPORTED"  # a dose converted from a non-DICOM source (OpenKBP, NIfTI): its plan is not known


def _voxel_indices(voxels: np.ndarray, shape) -> np.ndarray:
    """An ROI given as a mask on the CT grid or as flat (C-order) voxel indices -> the indices."""
    voxels = np.asarray(voxels)
    return np.flatnonzero(voxels) if voxels.dtype == bool and voxels.shape == tuple(shape) else voxels.ravel()


def _dvh_module(ds, dose: np.ndarray, rois: Mapping[int, tuple[str, np.ndarray]], voxel_cc: float) -> None:
    """The RT DVH module: a cumulative DVH (cm3 receiving at least each dose, in 0.1 Gy bins or coarser
    so the DVHData of one ROI stays well under a DS element's 64 KiB) of every ROI of the referenced
    structure set, computed on the CT grid (the dose before any resampling onto a dose grid)."""
    from pydicom.dataset import Dataset

    top = float(dose.max(initial=0.0))
    width = max(0.1, float(np.ceil(top / 2000 * 100) / 100))
    items = []
    flat = dose.ravel()
    for number, (_, voxels) in rois.items():
        values = flat[_voxel_indices(voxels, dose.shape)]
        n_bins = max(1, int(np.floor(float(values.max(initial=0.0)) / width)) + 1)
        counts = np.bincount(np.minimum((values / width).astype(np.int64), n_bins - 1), minlength=n_bins)
        at_least = np.cumsum(counts[::-1])[::-1] * voxel_cc  # bin i: volume with dose >= i * width
        item = Dataset()
        roi = Dataset()
        roi.ReferencedROINumber = number
        roi.DVHROIContributionType = "INCLUDED"
        item.DVHReferencedROISequence = [roi]
        item.DVHType = "CUMULATIVE"
        item.DoseUnits, item.DoseType = "GY", "PHYSICAL"
        item.DVHDoseScaling = 1
        item.DVHVolumeUnits = "CM3"
        item.DVHNumberOfBins = n_bins
        data = np.empty(2 * n_bins)
        data[0::2], data[1::2] = width, at_least
        item.DVHData = [f"{v:.6g}" for v in data]
        if values.size:
            item.DVHMinimumDose = f"{float(values.min()):.6g}"
            item.DVHMaximumDose = f"{float(values.max()):.6g}"
            item.DVHMeanDose = f"{float(values.mean()):.6g}"
        items.append(item)
    ds.DVHSequence = items


@dataclass(frozen=True)
class _DoseGrid:
    """Where an RTDOSE's values lie: points origin + (i sy, j sx) in each plane, on the CT slices
    k0 .. k1 (inclusive); `aligned` when the points are CT voxel centres (a crop of the CT grid)."""

    origin_xy: tuple[float, float]
    spacing_yx: tuple[float, float]
    shape_yx: tuple[int, int]
    k0: int
    k1: int
    aligned: bool


def _dose_grid(ref: CtReference, region: np.ndarray, spacing: float | None, margin: float) -> _DoseGrid:
    """The dose grid of an RTDOSE, as a planning system's: the bounding box of `region` (the body)
    plus `margin` mm, `spacing` mm in-plane (the CT's where it is coarser; None: the whole CT grid).
    Frames lie on the CT's slices (its slice spacing, so no dose is interpolated along z and the
    frames stay uniform); in-plane the CT's 0.5-1 mm pixels are 4-25 times more than a dose needs."""
    dy, dx, dz = ref.spacing
    ox, oy, _ = ref.origin
    ny, nx, nz = ref.shape
    if spacing is None or not region.any():
        return _DoseGrid((ox, oy), (dy, dx), (ny, nx), 0, nz - 1, True)
    # the bounding box, from the mask's projection on each axis (np.argwhere would list every voxel of it)
    extent = [np.flatnonzero(region.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    lo, hi = np.array([e[0] for e in extent]), np.array([e[-1] for e in extent])
    kz = int(np.ceil(margin / dz - 1e-9))
    k0, k1 = max(0, int(lo[2]) - kz), min(nz - 1, int(hi[2]) + kz)
    sy, sx = max(float(spacing), dy), max(float(spacing), dx)
    if np.isclose(sy, dy, rtol=1e-6) and np.isclose(sx, dx, rtol=1e-6):  # the CT is as coarse: a crop
        iy, ix = int(np.ceil(margin / dy - 1e-9)), int(np.ceil(margin / dx - 1e-9))
        i0, i1 = max(0, int(lo[0]) - iy), min(ny - 1, int(hi[0]) + iy)
        j0, j1 = max(0, int(lo[1]) - ix), min(nx - 1, int(hi[1]) + ix)
        return _DoseGrid((ox + j0 * dx, oy + i0 * dy), (dy, dx), (i1 - i0 + 1, j1 - j0 + 1), k0, k1, True)
    # in mm, clipped to the CT's extent (there is no dose beyond it)
    y0, y1 = max(oy, oy + lo[0] * dy - margin), min(oy + (ny - 1) * dy, oy + hi[0] * dy + margin)
    x0, x1 = max(ox, ox + lo[1] * dx - margin), min(ox + (nx - 1) * dx, ox + hi[1] * dx + margin)
    shape = (max(2, int(np.ceil((y1 - y0) / sy - 1e-9)) + 1), max(2, int(np.ceil((x1 - x0) / sx - 1e-9)) + 1))
    return _DoseGrid((float(x0), float(y0)), (sy, sx), shape, k0, k1, False)


# The weight of the smoothness term of the dose grid's fit, per CT voxel that a dose point covers:
# small enough that the fit follows the dose (DVH points within 0.1 Gy on the bundled patients), large
# enough to keep the points that few voxels read from ringing.
_SMOOTHING = 1e-3


def _interval_weights(f: np.ndarray, n: int):
    """Linear interpolation along one axis of a grid of `n` >= 2 points at the fractional indices `f`
    of a CT's rows (or columns): (matrix, w0, w1), w0 and w1 the weights of the points before and
    after each row, and matrix(v) the sparse (n - 1 intervals x len(f)) matrix that sums v over the
    rows of each interval (rows outside the grid count in its first or last interval)."""
    from scipy import sparse

    i0 = np.clip(np.floor(f).astype(np.int64), 0, n - 2)
    t = np.clip(f - i0, 0.0, 1.0)

    def matrix(w):
        return sparse.csr_matrix((w, (i0, np.arange(f.size))), shape=(n - 1, f.size))

    return matrix, 1 - t, t


def _fit_plane(values: np.ndarray, inside: np.ndarray, fi: np.ndarray, fj: np.ndarray, shape: tuple[int, int],
               smoothing: float, start: np.ndarray | None = None) -> np.ndarray:
    """The values u on a grid of `shape` (rows, cols, each >= 2) whose bilinear interpolation at the
    pixels of a plane (fractional grid indices fi of its rows, fj of its columns) best fits `values`
    where `inside`: min |A u - values|^2 + smoothing |D u|^2, A the interpolation, D the differences
    between neighbouring points. Only the points that some pixel inside reads are fitted (the others
    are 0). The normal equations, assembled by intervals of the grid (the pixels between two grid
    rows and two grid columns read the same four points), are solved by conjugate gradients from
    `start` (e.g. the fit of the neighbouring slice) or from the mean of the values each point reads."""
    from scipy import sparse

    rows, cols = shape
    r = np.flatnonzero(inside.any(axis=1))
    c = np.flatnonzero(inside.any(axis=0))
    rs, cs = slice(r[0], r[-1] + 1), slice(c[0], c[-1] + 1)
    w = inside[rs, cs].astype(np.float64)
    wd = w * values[rs, cs]
    my, y0, y1 = _interval_weights(fi[rs], rows)
    mx, x0, x1 = _interval_weights(fj[cs], cols)
    wy = (y0 * y0, y0 * y1, y1 * y1, y0, y1)  # st = 00, 01, 11 (for the normal matrix), then s (for A'b)
    ys = sparse.vstack([my(v) for v in wy]).tocsr() @ np.hstack([w, wd])  # interval sums along the rows
    ys = ys.reshape(5, rows - 1, 2 * w.shape[1])
    gx = sparse.hstack([mx(v).T for v in (x0 * x0, x0 * x1, x1 * x1)]).tocsc()
    bx = sparse.hstack([mx(v).T for v in (x0, x1)]).tocsc()
    # g[s, t, u, v][a, b]: sum over the pixels inside interval (a, b) of the weight of grid point
    # (a + s, b + u) times that of (a + t, b + v)
    pair = {(0, 0): 0, (0, 1): 1, (1, 0): 1, (1, 1): 2}
    gyx = [(gx.T @ ys[m, :, :w.shape[1]].T).T.reshape(rows - 1, 3, cols - 1) for m in range(3)]
    g = np.empty((2, 2, 2, 2, rows - 1, cols - 1))
    for (s, t), m in pair.items():
        for (u, v), m_x in pair.items():
            g[s, t, u, v] = gyx[m][:, m_x]
    rhs = np.zeros(shape)
    for s in (0, 1):
        sums = (bx.T @ ys[3 + s, :, w.shape[1]:].T).T.reshape(rows - 1, 2, cols - 1)
        for u in (0, 1):
            rhs[s:s + rows - 1, u:u + cols - 1] += sums[:, u]
    # the normal matrix A'A + smoothing D'D, a 9-point stencil: stencil[dy, dx][p] couples grid point p
    # with p + (dy, dx); the points that no pixel reads are left out (a 1 on the diagonal, rhs 0)
    stencil = np.zeros((3, 3, rows, cols))
    for s, t, u, v in np.ndindex(2, 2, 2, 2):
        stencil[t - s + 1, v - u + 1, s:s + rows - 1, u:u + cols - 1] += g[s, t, u, v]
    centre = stencil[1, 1]
    used = centre > 1e-9 * max(float(centre.max(initial=0.0)), 1e-30)
    if not used.any():
        return np.zeros(shape)
    pair_y = smoothing * (used[:-1] & used[1:])  # neighbours that are both fitted
    pair_x = smoothing * (used[:, :-1] & used[:, 1:])
    centre[:-1] += pair_y
    centre[1:] += pair_y
    stencil[2, 1, :-1] -= pair_y
    stencil[0, 1, 1:] -= pair_y
    centre[:, :-1] += pair_x
    centre[:, 1:] += pair_x
    stencil[1, 2, :, :-1] -= pair_x
    stencil[1, 0, :, 1:] -= pair_x
    centre[~used] = 1.0
    n = rows * cols
    diagonals: dict[int, np.ndarray] = {}  # offset -> the matrix's diagonal, by column (scipy's dia layout)
    for dy, dx in np.ndindex(3, 3):
        o = (dy - 1) * cols + (dx - 1)  # on a grid of 2 columns, two stencil entries share an offset
        flat = stencil[dy, dx].ravel()
        data = diagonals.setdefault(o, np.zeros(n))
        if o >= 0:
            data[o:] += flat[:n - o]
        else:
            data[:n + o] += flat[-o:]
    normal = sparse.dia_matrix((np.array(list(diagonals.values())), list(diagonals)), shape=(n, n)).tocsr()
    used = used.ravel()
    b = np.where(used, rhs.ravel(), 0)
    if not b.any():  # no dose inside: the fit is 0
        return np.zeros(shape)
    precondition = 1 / centre.ravel()
    if start is None:  # the weighted mean of the values each point reads
        x = b / np.where(used, normal @ used.astype(np.float64), 1)
    else:
        x = np.where(used, start.ravel(), 0)
    # conjugate gradients, preconditioned by the diagonal, to a residual of 1e-8 of the right-hand side
    # (products summed by numpy, not by a threaded BLAS, which is slow on vectors this short)
    r = b - normal @ x
    z = precondition * r
    p = z.copy()
    rz = float((r * z).sum())
    stop = 1e-16 * float((b * b).sum())
    for _ in range(1000):
        if float((r * r).sum()) <= stop:
            break
        q = normal @ p
        pq = float((p * q).sum())
        if not pq > 0:  # converged to the precision of float64
            break
        alpha = rz / pq
        x += alpha * p
        r -= alpha * q
        z = precondition * r
        rz, rz_old = float((r * z).sum()), rz
        p = z + rz / rz_old * p
    return x.reshape(shape)


def _on_dose_grid(dose: np.ndarray, region: np.ndarray, ref: CtReference, g: _DoseGrid) -> np.ndarray:
    """The dose at the points of `g` (rows, cols, CT slices k0..k1), from the dose on the CT grid.

    Aligned: the CT voxels themselves. Otherwise, in each CT slice, the values whose bilinear
    interpolation (the trilinear reading of a planning system, with the frames on the CT's slices)
    best fits the dose of every voxel of `region` (least squares, with a little smoothing; see
    `_fit_plane`): sampling the dose at the points and interpolating it back would smooth it twice, and
    lose up to 0.7 Gy of a PTV's D99 where the dose falls steeply at the body's edge. Points just
    outside the body are fitted too (the voxels inside read them), so the edge is not diluted; points
    that no voxel of the region reads are 0. Clipped to the dose's range."""
    ks = slice(g.k0, g.k1 + 1)
    dy, dx, _ = ref.spacing
    ox, oy, _ = ref.origin
    if g.aligned:
        i0, j0 = round((g.origin_xy[1] - oy) / dy), round((g.origin_xy[0] - ox) / dx)
        return dose[i0:i0 + g.shape_yx[0], j0:j0 + g.shape_yx[1], ks]
    smoothing = _SMOOTHING * g.spacing_yx[0] * g.spacing_yx[1] / (dy * dx)
    top = float(dose[region].max(initial=0.0))
    out = np.zeros((*g.shape_yx, g.k1 - g.k0 + 1), np.float32)
    fi = (oy + np.arange(ref.shape[0]) * dy - g.origin_xy[1]) / g.spacing_yx[0]
    fj = (ox + np.arange(ref.shape[1]) * dx - g.origin_xy[0]) / g.spacing_yx[1]
    fit = None
    for n, k in enumerate(range(g.k0, g.k1 + 1)):
        if region[:, :, k].any():
            fit = _fit_plane(dose[:, :, k], region[:, :, k], fi, fj, g.shape_yx, smoothing, fit)
            out[:, :, n] = np.clip(fit, 0, top)
    return out


def write_rtdose(path: str | Path, dose: np.ndarray, ct_reference: CtReference | str | Path,
                 description: str = "rtgen predicted dose", bits: int = 16,
                 rois: Mapping[int, tuple[str, np.ndarray]] | None = None, plan_uid: str | None = None,
                 summation: str = PREDICTED, body: np.ndarray | None = None, grid_spacing: float | None = 2.5,
                 margin: float = 10.0) -> Path:
    """An RTDOSE of `dose` (Gy, on the CT grid of `ct_reference`: a CtReference or a DICOM folder).

    The dose grid, as a planning system's: the bounding box of `body` (a mask on the CT grid;
    default where the dose is > 0, as rtgen's predictions are zero outside the body) and of every
    ROI of `rois` (so software that computes DVHs on the dose grid sees all of each ROI) plus `margin`
    mm, at `grid_spacing` mm in-plane (the CT's spacing where it is coarser, the grid is then a crop
    of the CT's; None writes the whole CT grid), frames on the CT's slices. The values are fitted
    (least squares) so that the trilinear reading of the grid, as a planning system reads it, gives
    back the dose on the CT inside the body, its edge included (see `_on_dose_grid`): 2-5 MB for a
    512 x 512 CT, where the CT's own grid takes 51 MB (16-bit).

    Frames run from feet to head so GridFrameOffsetVector increases ([0, dz, 2 dz, ...]) as most
    viewers expect. Stored as uint16 by default, with DoseGridScaling chosen so the maximum dose uses
    the full range: a step of max / 65535 (0.001 Gy at 70 Gy, under 0.01 Gy up to 655 Gy), read back
    within half a step. 16 bits rather than 32 because every planning system and validator reads
    them (Debian's dciodvfy asserts on 32-bit pixel data) and 0.01 Gy is finer than any dose
    criterion; `bits=32` remains for a finer step. DoseUnits GY, DoseType PHYSICAL, fresh SOP and
    series UIDs; the study and frame of reference are the CT's.

    The plan: with `plan_uid` (an RTPLAN's SOPInstanceUID; a folder's own RTPLAN on the CT's frame
    of reference when `ct_reference` is a folder) DoseSummationType is PLAN and ReferencedRTPlanSequence
    references it; without one, `summation` (PREDICTED, or IMPORTED for a converted dose: see the
    comment above PREDICTED). The RT DVH module is written whole or not at all: with `rois`
    (ROINumber -> (name, mask on the CT grid or its flat voxel indices) of every ROI of the
    structure set `ct_reference` names; a folder's RTSTRUCT when `ct_reference` is a folder) it
    references the structure set and holds the DVH of every ROI, computed on the CT grid; without
    them neither.
    """
    from pydicom.dataset import Dataset
    from pydicom.tag import Tag
    from pydicom.uid import generate_uid

    from rtgen.data.sources.dicom.read import read_dose_reference

    path = Path(path)
    if isinstance(ct_reference, CtReference):
        ref = ct_reference
    else:
        ref, found, found_plan = read_dose_reference(ct_reference)
        rois = found if rois is None else rois
        plan_uid = plan_uid or found_plan
    dose = np.asarray(dose, np.float32)
    if dose.shape != ref.shape:
        raise DataError(path, f"dose shape {dose.shape} differs from the CT grid {ref.shape}")
    if body is not None and np.shape(body) != ref.shape:
        raise DataError(path, f"body mask shape {np.shape(body)} differs from the CT grid {ref.shape}")
    if not np.all(np.isfinite(dose)):
        raise DataError(path, "dose contains NaN or infinite values; refusing to write")
    if bits not in (16, 32):
        raise ValueError(f"bits must be 16 or 32, got {bits}")
    if grid_spacing is not None and not grid_spacing > 0 or not margin >= 0:
        raise ValueError(f"grid_spacing must be > 0 (or None) and margin >= 0, got {grid_spacing}, {margin}")
    if dose.min(initial=0.0) < 0:
        dose = np.maximum(dose, 0)
    region = dose > 0 if body is None else np.asarray(body, bool)
    region = region.copy()
    for _, voxels in (rois or {}).values():  # the grid covers every ROI too, as the DVHs of other software need
        region.ravel()[_voxel_indices(voxels, ref.shape)] = True
    grid = _dose_grid(ref, region, grid_spacing, margin)
    values = _on_dose_grid(dose, region, ref, grid)
    top = float(values.max(initial=0.0))
    levels = (1 << bits) - 1
    # rounded up in its 9th digit, so the maximum dose never exceeds the stored range
    scaling = float(f"{(top / levels * (1 + 1e-7) if top > 0 else 1e-6):.8e}")
    stored = np.clip(np.rint(values.astype(np.float64) / scaling), 0, levels).astype(np.uint32 if bits == 32 else np.uint16)
    ds = _base_dataset(ref, RT_DOSE_STORAGE, generate_uid(), "RTDOSE", generate_uid(), 3, description)
    ds.InstanceNumber = 1
    dz = ref.spacing[2]
    zs = ref.slice_z()[grid.k0:grid.k1 + 1]
    ds.ImagePositionPatient = [_ds(grid.origin_xy[0]), _ds(grid.origin_xy[1]), _ds(zs[-1])]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [_ds(grid.spacing_yx[0]), _ds(grid.spacing_yx[1])]
    ds.SliceThickness = _ds(dz)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = len(zs)
    ds.FrameIncrementPointer = Tag(0x3004, 0x000C)
    ds.Rows, ds.Columns = (int(n) for n in grid.shape_yx)
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.GridFrameOffsetVector = [_ds(z - zs[-1]) for z in zs[::-1]]
    ds.DoseUnits, ds.DoseType = "GY", "PHYSICAL"
    ds.DoseSummationType = "PLAN" if plan_uid else summation
    if plan_uid:
        plan = Dataset()
        plan.ReferencedSOPClassUID = RT_PLAN_STORAGE
        plan.ReferencedSOPInstanceUID = plan_uid
        ds.ReferencedRTPlanSequence = [plan]
    ds.DoseGridScaling = f"{scaling:.8e}"
    ds.TissueHeterogeneityCorrection = "IMAGE"
    if ref.structure_set_uid and rois:
        ss = Dataset()
        ss.ReferencedSOPClassUID = RT_STRUCTURE_SET_STORAGE
        ss.ReferencedSOPInstanceUID = ref.structure_set_uid
        ds.ReferencedStructureSetSequence = [ss]
        _dvh_module(ds, dose, rois, float(np.prod(ref.spacing)) / 1000.0)
    frames = np.moveaxis(stored[:, :, ::-1], -1, 0)  # (frames feet to head, rows, cols)
    ds.PixelData = np.ascontiguousarray(frames).astype("<u4" if bits == 32 else "<u2").tobytes()
    return _save(ds, path)


def write_dicom_patient(patient: Patient, out_dir: str | Path, ref: CtReference | None = None,
                        patient_name: str | None = None, dose_spacing: float | None = 2.5,
                        dose_margin: float = 10.0, anonymize: bool = False, summation: str = IMPORTED,
                        description: str = "rtgen dose") -> Path:
    """Write a patient as DICOM RT: `CT/CT_0001.dcm ...` (one file per axial slice), `RTSTRUCT.dcm`
    (every structure plus the possible dose mask as the External ROI, so reading it back gives the
    same mask) and `RTDOSE.dcm` if the patient has a dose. All or nothing (staged folder).
    Without `ref`, fresh UIDs and a grid centred on the origin. The RTDOSE's grid: see `write_rtdose`
    (`dose_spacing`, `dose_margin`; the body is the possible dose mask). `anonymize`: fresh identifiers
    (`identity.anonymized`), the same in every file written; `summation`: the RTDOSE's
    DoseSummationType (IMPORTED for a converted dose, PREDICTED for a prediction)."""
    out_dir = Path(out_dir)
    if patient.ct is None:
        raise DataError(out_dir, f"patient {patient.id} has no CT; a DICOM export needs one")
    ref = ref or CtReference.new(patient.grid, patient.spacing, patient_id=patient.id, patient_name=patient_name)
    if anonymize:
        ref = anonymized(ref)
    from pydicom.uid import generate_uid

    with staged_dir(out_dir) as stage:
        write_ct_series(patient.ct, ref, stage / "CT")
        ss_uid = generate_uid()
        structures = {**patient.structures, BODY: patient.possible_dose_mask}
        write_rtstruct(structures, ref, stage / "RTSTRUCT.dcm", ss_uid)
        if patient.dose is not None:  # ROI numbers as write_rtstruct gives them
            rois = {number: item for number, item in enumerate(structures.items(), start=1)}
            write_rtdose(stage / "RTDOSE.dcm", patient.dose, replace(ref, structure_set_uid=ss_uid),
                         description=description, rois=rois, summation=summation,
                         body=patient.possible_dose_mask | (patient.dose > 0), grid_spacing=dose_spacing,
                         margin=dose_margin)
    return out_dir
