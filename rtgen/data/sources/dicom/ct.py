"""The CT series of a DICOM patient: its slices' headers checked one by one and against each other
(one orientation, size and pixel spacing; evenly spaced positions, none missing) into a
`CtReference`, then the pixel data as an int16 HU volume in rtgen's axis order. An inconsistent
slice is named by its file: the odd one out when the other slices agree."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from rtgen.core.errors import DataError
from rtgen.data.sources.dicom.folder import Scan
from rtgen.data.sources.dicom.geometry import (
    TOL,
    CtReference,
    apply_inplane,
    canonical_inplane,
)
from rtgen.data.sources.dicom.tags import (
    floats,
    integer,
    number,
    read_file,
    reading,
    text,
    uid,
)


@dataclass(frozen=True)
class _Slice:
    """The tags of one CT slice that place it, as checked numbers."""

    path: Path
    orientation: tuple[float, ...]  # ImageOrientationPatient (6 direction cosines)
    position: np.ndarray  # ImagePositionPatient (x, y, z) mm
    spacing: tuple[float, float]  # PixelSpacing (between rows, between columns) mm
    size: tuple[int, int]  # (Rows, Columns)
    sop_uid: str
    frame_of_reference_uid: str


@dataclass
class CtSeries:
    ref: CtReference
    files: list[Path]  # in rtgen slice order (head to feet)
    inplane: tuple  # canonical_inplane result


def _read_slice(path: Path, ds) -> _Slice:
    with reading(path):
        return _Slice(path, tuple(floats(ds, "ImageOrientationPatient", path, 6)),
                      floats(ds, "ImagePositionPatient", path, 3),
                      tuple(floats(ds, "PixelSpacing", path, 2, positive=True)),
                      (integer(ds, "Rows", path, minimum=1), integer(ds, "Columns", path, minimum=1)),
                      uid(ds, "SOPInstanceUID", path), text(ds, "FrameOfReferenceUID", path))


def _check_agree(slices: list[_Slice], what: str, key) -> None:
    """Every slice has the same `key(slice)` (numbers within TOL, or a string) as most of them;
    DataError naming the first that does not."""
    def norm(s):
        v = key(s)
        return v if isinstance(v, str) else tuple(np.round(np.asarray(v, np.float64), 3).tolist())

    values = [norm(s) for s in slices]
    common = Counter(values).most_common(1)[0][0]
    model = next(s for s, v in zip(slices, values) if v == common)
    for s, v in zip(slices, values):
        if v != common if isinstance(v, str) else not np.allclose(v, common, atol=TOL):
            shown = v if isinstance(v, str) else list(v)
            expected = common if isinstance(common, str) else list(common)
            raise DataError(s.path, f"{what} {shown} differs from {expected} of the other slices "
                                    f"(e.g. {model.path.name})")


def _slice_order(slices: list[_Slice], normal: np.ndarray, others: list[tuple[Path, str]] = ()
                 ) -> tuple[list[_Slice], np.ndarray, float | None]:
    """Slices sorted head to feet, their positions along the slice normal and the slice spacing
    (None for one slice); DataError for a slice off the others' grid, a duplicate or a gap. A gap
    names a non-CT DICOM file (`others`: path, why) among the slices if there is one: likely the
    damaged slice."""
    z = np.array([float(s.position @ normal) * np.sign(normal[2]) for s in slices])
    order = np.argsort(-z, kind="stable")  # rtgen's axis 2 runs head to feet: decreasing z
    slices, z = [slices[i] for i in order], z[order]
    if len(slices) == 1:
        return slices, z, None
    gaps = -np.diff(z)
    dup = np.flatnonzero(gaps < TOL)
    if dup.size:
        i = int(dup[0])
        raise DataError(slices[i + 1].path, f"same slice position z={z[i]:.3f} mm as {slices[i].path.name}")
    dz = float(np.median(gaps))
    tol = max(0.01 * dz, TOL)
    missing = np.flatnonzero(gaps > 1.5 * dz)
    bad = np.flatnonzero(np.abs(gaps - dz) > tol)
    if not bad.size:
        return slices, z, dz
    odd = _off_grid(z, dz, tol)
    if odd is not None:  # one slice off the grid the others share is the malformed one: name it, not its neighbour
        raise DataError(slices[odd].path, f"non-uniform slice spacing: z={z[odd]:.3f} mm is off the {dz:.3f} mm grid "
                                          f"of the other slices (e.g. {slices[0 if odd else 1].path.name})")
    if missing.size:
        i = int(missing[0])
        n = round(float(gaps[i]) / dz) - 1
        gap = (f"a gap of {gaps[i]:.3f} mm (~{n} slice(s) of {dz:.3f} mm) between z={z[i]:.3f} "
               f"({slices[i].path.name}) and z={z[i + 1]:.3f} mm ({slices[i + 1].path.name})")
        beside = [(p, why) for p, why in others if p.parent == slices[i].path.parent]
        if beside:
            raise DataError(beside[0][0], f"not read as a CT slice ({beside[0][1]}) while the CT series beside it "
                                          f"misses a slice: {gap}")
        raise DataError(slices[i + 1].path, f"missing slice(s): {gap}")
    i = int(bad[0])
    raise DataError(slices[i + 1].path, f"non-uniform slice spacing: {gaps[i]:.3f} mm to {slices[i].path.name}, "
                                        f"elsewhere {dz:.3f} mm (spacings {sorted(set(np.round(gaps, 3)))})")


def _off_grid(z: np.ndarray, dz: float, tol: float) -> int | None:
    """The one slice whose position is off the dz grid that the other slices share, if there is one."""
    steps = (z[None, :] - z[:, None]) / dz
    on_grid = (np.abs(steps - np.round(steps)) * dz <= tol).sum(axis=1)
    lowest = np.flatnonzero(on_grid == on_grid.min())
    return int(lowest[0]) if lowest.size == 1 and on_grid.min() < on_grid.max() else None


def _one_series(folder: Path, scan: Scan) -> tuple[str, list]:
    if not scan.ct:
        raise DataError(folder, "no CT series found (a DICOM patient needs a CT series, optionally with RTSTRUCT and RTDOSE)")
    if len(scan.ct) > 1:
        uids = sorted(scan.ct, key=lambda u: (-len(scan.ct[u]), u))
        detail = "; ".join(f"{u} ({len(scan.ct[u])} files, e.g. {scan.ct[u][0][0]})" for u in uids)
        odd = scan.ct[uids[-1]]  # a few stray slices beside a full series: name one of them
        where = odd[0][0] if len(odd) < len(scan.ct[uids[0]]) else folder
        raise DataError(where, f"holds {len(uids)} CT series, expected one: {detail}")
    return next(iter(scan.ct.items()))


def ct_series(folder: Path, scan: Scan) -> CtSeries:
    """The one CT series of a scanned folder, checked, as a CtReference (headers only)."""
    series_uid, items = _one_series(folder, scan)
    slices = [_read_slice(p, ds) for p, ds in items]
    _check_agree(slices, "orientation", lambda s: s.orientation)
    _check_agree(slices, "size (rows, columns)", lambda s: s.size)
    _check_agree(slices, "pixel spacing", lambda s: s.spacing)
    _check_agree(slices, "FrameOfReferenceUID", lambda s: s.frame_of_reference_uid)
    first = slices[0]
    if len(slices) < 2:  # no slice spacing, and a dose grid of one frame: nothing a dose can be predicted on
        raise DataError(first.path, "the CT series has 1 slice; a patient needs a CT volume (2 slices at least)")
    if not first.frame_of_reference_uid:  # the same in every slice (checked above)
        raise DataError(first.path, "empty FrameOfReferenceUID: structures and doses cannot be placed on this CT "
                                    "(export the series with its frame of reference)")
    inplane = canonical_inplane(first.path, first.orientation, first.spacing, *first.size)
    iop = np.asarray(first.orientation)
    slices, z, dz = _slice_order(slices, np.cross(iop[:3], iop[3:]), scan.other)
    headers = dict(items)
    head_path = slices[0].path
    head = headers[head_path]
    transpose, _, _, (dy, dx), (x_off, y_off) = inplane
    rows, cols = first.size
    ny, nx = (cols, rows) if transpose else (rows, cols)
    ipp = slices[0].position
    with reading(head_path):
        def s(key):
            return text(head, key, head_path)

        ref = CtReference(
            shape=(ny, nx, len(slices)), spacing=(dy, dx, dz), origin=(ipp[0] + x_off, ipp[1] + y_off, float(z[0])),
            study_uid=s("StudyInstanceUID"), series_uid=series_uid, frame_of_reference_uid=s("FrameOfReferenceUID"),
            patient_id=s("PatientID"), patient_name=s("PatientName"),
            sop_instance_uids=tuple(sl.sop_uid for sl in slices),
            study_date=s("StudyDate"), study_time=s("StudyTime"), study_id=s("StudyID"),
            accession_number=s("AccessionNumber"), patient_birth_date=s("PatientBirthDate"),
            patient_sex=s("PatientSex"),
        )
    return CtSeries(ref, [sl.path for sl in slices], inplane)


def read_pixels(path: Path):
    """The full dataset and its pixel array, or DataError naming the file (e.g. JPEG 2000 without a decoder)."""
    ds = read_file(path)
    with reading(path):
        has_pixels = "PixelData" in ds
    if not has_pixels:
        raise DataError(path, "has no pixel data")
    try:
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - NotImplementedError / RuntimeError for a missing codec, ValueError for bad lengths
        try:
            ts = ds.file_meta.get("TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
            name = getattr(ts, "name", str(ts)) if ts is not None else "unknown"
        except Exception:  # noqa: BLE001 - only for the message
            name = "unreadable"
        detail = " ".join(str(e).split())[:400] or type(e).__name__
        if isinstance(e, NotImplementedError) or "missing" in detail.lower():  # no decoder for this syntax
            raise DataError(path, f"pixel data cannot be decoded: no decoder for transfer syntax {name} (rtgen's "
                                  "pylibjpeg plugins decode JPEG lossless, JPEG-LS, JPEG 2000 and RLE; convert "
                                  f"the export to uncompressed otherwise): {detail}") from None
        raise DataError(path, f"pixel data cannot be decoded (transfer syntax {name}; a damaged or truncated "
                              f"file?): {detail}") from None
    return ds, np.asarray(arr)


def read_ct_volume(series: CtSeries) -> np.ndarray:
    """The series' pixel data in HU (RescaleSlope/Intercept applied), int16, in rtgen's axis order."""
    transpose, flip_r, flip_c, _, _ = series.inplane
    ref = series.ref
    ct = np.empty(ref.shape, np.int16)
    lo, hi = np.iinfo(np.int16).min, np.iinfo(np.int16).max
    for k, path in enumerate(series.files):
        ds, arr = read_pixels(path)
        expected = (ref.shape[1], ref.shape[0]) if transpose else ref.shape[:2]
        if arr.shape != tuple(expected):
            raise DataError(path, f"CT pixel data has shape {arr.shape}, expected one {expected[0]}x{expected[1]} image")
        with reading(path):
            slope = number(ds, "RescaleSlope", path, default=1.0) or 1.0
            intercept = number(ds, "RescaleIntercept", path, default=0.0)
        hu = np.rint(arr.astype(np.float64) * slope + intercept)
        if hu.min() < lo or hu.max() > hi:
            raise DataError(path, f"HU values {hu.min():.0f}..{hu.max():.0f} overflow int16 (check RescaleSlope/Intercept)")
        ct[:, :, k] = apply_inplane(hu, transpose, flip_r, flip_c)
    return ct


def body_from_ct(ct: np.ndarray) -> np.ndarray:
    """The patient's body from the CT alone: > -500 HU, holes filled slice by slice (airways),
    the largest connected component (drops couch and noise), dilated by one voxel."""
    body = ct > -500
    for k in range(body.shape[2]):
        body[:, :, k] = ndimage.binary_fill_holes(body[:, :, k])
    labels, n = ndimage.label(body)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        body = labels == int(np.argmax(sizes))
    return ndimage.binary_dilation(body, iterations=1)
