"""RTSTRUCT reading: which structure set belongs to the CT (by frame of reference and series UIDs)
and its ROIs as closed planar contours in patient mm. Every sequence item is checked for the tags
it needs, so a broken item is reported by its place ("ROIContourSequence item 2 has no ...")."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from rtgen.core.errors import DataError, RtgenWarning
from rtgen.data.sources.dicom.folder import Scan
from rtgen.data.sources.dicom.geometry import CtReference
from rtgen.data.sources.dicom.tags import (
    floats,
    integer,
    read_file,
    reading,
    sequence,
    text,
)


def _refs(path: Path, ds) -> tuple[set[str], set[str]]:
    """(frame of reference UIDs, series UIDs) an RTSTRUCT says it was drawn on."""
    fors, series = set(), set()
    with reading(path):
        for i, rfor in enumerate(sequence(ds, "ReferencedFrameOfReferenceSequence", path), start=1):
            where = f"ReferencedFrameOfReferenceSequence item {i}"
            if uid := text(rfor, "FrameOfReferenceUID", path, where=where):
                fors.add(uid)
            for study in sequence(rfor, "RTReferencedStudySequence", path, where):
                for ser in sequence(study, "RTReferencedSeriesSequence", path, where):
                    if uid := text(ser, "SeriesInstanceUID", path, where=where):
                        series.add(uid)
        for i, roi in enumerate(sequence(ds, "StructureSetROISequence", path), start=1):
            if uid := text(roi, "ReferencedFrameOfReferenceUID", path, where=f"StructureSetROISequence item {i}"):
                fors.add(uid)
    return fors, series


def matching_rtstruct(scan: Scan, ref: CtReference, required: bool = True) -> tuple[Path, object] | None:
    """(path, header) of the one RTSTRUCT drawn on the CT of `ref`, or None without one. An RTSTRUCT of
    another series is an error when `required` and it is the only one, else an RtgenWarning."""
    if not scan.rtstruct:
        return None
    good, bad = [], []
    for path, ds in scan.rtstruct:
        fors, series = _refs(path, ds)
        mismatch = []
        if fors and ref.frame_of_reference_uid not in fors:
            mismatch.append(f"frame of reference {', '.join(sorted(fors))}, the CT's is {ref.frame_of_reference_uid}")
        if series and ref.series_uid not in series:
            mismatch.append(f"series {', '.join(sorted(series))}, the CT's is {ref.series_uid}")
        (bad if mismatch else good).append((path, ds, mismatch))
    if len(good) > 1:
        raise DataError(good[1][0], f"a second RTSTRUCT for the same CT (the first is {good[0][0]}); keep one in the folder")
    if not good:
        if not required:
            return None
        path, _, mismatch = bad[0]
        raise DataError(path, "RTSTRUCT references another CT series: " + "; ".join(mismatch))
    if bad and required:
        path, _, mismatch = bad[0]
        warnings.warn(f"{path}: RTSTRUCT of another series ignored ({'; '.join(mismatch)})", RtgenWarning, stacklevel=3)
    return good[0][0], good[0][1]


def read_rtstruct_rois(path: str | Path) -> dict[str, list[np.ndarray]]:
    """ROI name -> its closed planar contours, each an (n, 3) array of patient (x, y, z) in mm."""
    path = Path(path)
    return rois(path, read_file(path))


def rois(path: Path, ds) -> dict[str, list[np.ndarray]]:
    """The ROIs of an RTSTRUCT dataset read from `path` (see `read_rtstruct_rois`); ROIs of the same
    name are merged."""
    found: dict[str, list[np.ndarray]] = {}
    for name, contours in rois_by_number(path, ds).values():
        found.setdefault(name, []).extend(contours)
    return found


def _contour_data(c, path: Path, here: str) -> np.ndarray:
    """ContourData as a float64 array. Parsed from the bytes as stored when it can be: pydicom converts
    each DS value to an object of its own, 1.8 s for the 265,000 numbers of a planning system's
    structure set; anything numpy cannot parse (or not finite) goes through `floats`, which says what
    is wrong with it."""
    raw = getattr(c.get_item("ContourData"), "value", None) if "ContourData" in c else None
    if isinstance(raw, bytes):
        try:
            pts = np.array(raw.split(b"\\"), np.float64)
        except ValueError:
            pts = None
        if pts is not None and np.all(np.isfinite(pts)):
            return pts
    return floats(c, "ContourData", path, where=here, default=())


def rois_by_number(path: Path, ds) -> dict[int, tuple[str, list[np.ndarray]]]:
    """ROINumber -> (ROI name, closed planar contours in patient mm) of an RTSTRUCT dataset, in the
    order of its StructureSetROISequence (an ROI without contours has none)."""
    with reading(path):
        names: dict[int, str] = {}
        for i, r in enumerate(sequence(ds, "StructureSetROISequence", path), start=1):
            where = f"StructureSetROISequence item {i}"
            number = integer(r, "ROINumber", path, where)
            names[number] = text(r, "ROIName", path, f"ROI {number}", where)
        found: dict[int, tuple[str, list[np.ndarray]]] = {n: (name, []) for n, name in names.items()}
        for i, rc in enumerate(sequence(ds, "ROIContourSequence", path), start=1):
            where = f"ROIContourSequence item {i}"
            number = integer(rc, "ReferencedROINumber", path, where)
            name = names.get(number)
            if name is None:
                raise DataError(path, f"{where} refers to ROI number {number}, which StructureSetROISequence "
                                      "does not define")
            for j, c in enumerate(sequence(rc, "ContourSequence", path, where), start=1):
                here = f"ROI {name!r} contour {j}"
                if text(c, "ContourGeometricType", path, "CLOSED_PLANAR", here).upper() != "CLOSED_PLANAR":
                    continue  # points and open polylines enclose no volume
                pts = _contour_data(c, path, here)
                if pts.size < 9 or pts.size % 3:
                    raise DataError(path, f"{here}: {pts.size} coordinates (need >= 3 points of x, y, z)")
                found[number][1].append(pts.reshape(-1, 3))
    return found
