"""A DICOM patient folder -> an rtgen `Patient`: the CT series, the RTSTRUCT drawn on it (ROIs
matched to rtgen names) and the plan RTDOSE resampled onto the CT grid. This module only decides
which files make the patient; each file is read by the ct, rtstruct and rtdose modules."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from rtgen.core.errors import DataError, RtgenWarning
from rtgen.core.structures import STRUCTURES
from rtgen.data.records import Patient
from rtgen.data.sources.dicom.ct import body_from_ct, ct_series, read_ct_volume
from rtgen.data.sources.dicom.folder import Scan, scan_folder
from rtgen.data.sources.dicom.geometry import CtReference
from rtgen.data.sources.dicom.names import BODY, load_aliases, match_roi_names
from rtgen.data.sources.dicom.raster import rasterise_contours
from rtgen.data.sources.dicom.rtdose import dose_on_ct_grid, read_rtdose
from rtgen.data.sources.dicom.rtstruct import matching_rtstruct, rois, rois_by_number
from rtgen.data.sources.dicom.tags import reading, text, uid
from rtgen.data.validate import check_values


def read_ct_reference(folder: str | Path) -> CtReference:
    """The CT geometry and UIDs of a DICOM patient folder (headers only), for writing doses onto it."""
    folder = Path(folder)
    scan = scan_folder(folder)
    series = ct_series(folder, scan)
    st = matching_rtstruct(scan, series.ref, required=False)
    if st is not None:
        return replace(series.ref, structure_set_uid=uid(st[1], "SOPInstanceUID", st[0]))
    return series.ref


def read_dose_reference(folder: str | Path) -> tuple[CtReference, dict[int, tuple[str, np.ndarray]], str | None]:
    """What an RTDOSE written onto a DICOM patient folder refers to: the CT (`read_ct_reference`),
    every ROI of its RTSTRUCT as ROINumber -> (name, its voxels as flat indices on the CT grid), for
    the RT DVH module (empty without an RTSTRUCT), and the SOPInstanceUID of the folder's RTPLAN on
    the CT's frame of reference (None without one, or with several: which plan a prediction belongs
    to is then unknown)."""
    folder = Path(folder)
    scan = scan_folder(folder)
    series = ct_series(folder, scan)
    ref = series.ref
    masks: dict[int, tuple[str, np.ndarray]] = {}
    st = matching_rtstruct(scan, ref, required=False)
    if st is not None:
        ref = replace(ref, structure_set_uid=uid(st[1], "SOPInstanceUID", st[0]))
        for number, (name, contours) in rois_by_number(st[0], st[1]).items():
            # flat voxel indices rather than masks: a clinical structure set has dozens of ROIs
            masks[number] = (name, np.flatnonzero(rasterise_contours(contours, ref)[0]).astype(np.int32))
    plans = []
    for path, ds in scan.rtplan:
        with reading(path):
            fo = text(ds, "FrameOfReferenceUID", path)
            if fo in ("", ref.frame_of_reference_uid):
                plans.append((path, uid(ds, "SOPInstanceUID", path)))
    if len(plans) > 1:
        warnings.warn(f"{folder}: {len(plans)} RTPLAN files ({', '.join(p.name for p, _ in plans)}); the RTDOSE "
                      "references none of them", RtgenWarning, stacklevel=2)
    return ref, masks, plans[0][1] if len(plans) == 1 else None


def _pick_rtdose(scan: Scan, ref: CtReference) -> Path:
    cands = []
    for path, ds in scan.rtdose:
        with reading(path):
            fo = text(ds, "FrameOfReferenceUID", path)
            summation = text(ds, "DoseSummationType", path).upper()
        if fo and fo != ref.frame_of_reference_uid:
            raise DataError(path, f"RTDOSE on frame of reference {fo}, the CT's is {ref.frame_of_reference_uid}")
        cands.append((path, summation))
    plans = [p for p, t in cands if t == "PLAN"]
    if len(cands) == 1:
        return cands[0][0]
    if len(plans) == 1:
        return plans[0]
    raise DataError(cands[1][0], f"{len(cands)} RTDOSE files ({', '.join(p.name for p, _ in cands)}); "
                                 "keep the one plan dose (DoseSummationType PLAN) in the folder")


def _structures(st_path: Path, st_ds, ref: CtReference, table) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """(rtgen structures, body mask or None) from the RTSTRUCT at `st_path` (its header is the whole file)."""
    found = rois(st_path, st_ds)
    matched, unmatched = match_roi_names(list(found), table)
    if unmatched:
        warnings.warn(f"{st_path}: ROIs not matched to rtgen structures, not used (name them in an alias file "
                      f"to use them): {', '.join(repr(u) for u in unmatched)}", RtgenWarning, stacklevel=3)
    structures, body = {}, None
    for target, roi in matched.items():
        mask, off = rasterise_contours(found[roi], ref)
        if off:
            warnings.warn(f"{st_path}: ROI {roi!r}: {off} contour(s) outside the CT's slices skipped",
                          RtgenWarning, stacklevel=3)
        if target == BODY:
            body = mask
        else:
            structures[target] = mask
    return {n: structures[n] for n in STRUCTURES if n in structures}, body


def read_dicom_patient(folder: str | Path, load_ct: bool = True, load_dose: bool = True,
                       aliases: Mapping[str, Sequence[str]] | str | Path | None = None,
                       patient_id: str | None = None) -> Patient:
    """Read a DICOM patient folder (CT series, optional RTSTRUCT and RTDOSE) into a `Patient`.

    - CT: int16 HU after RescaleSlope/Intercept, in the axis convention of the package docstring.
    - Structures: RTSTRUCT ROIs matched to rtgen names by `aliases` (the default table, a mapping, or
      a JSON/YAML file for `load_aliases`); ROIs that match nothing are listed in an RtgenWarning.
    - Dose: the RTDOSE resampled onto the CT grid (None without one or with load_dose=False).
    - possible_dose_mask: DICOM has no such thing; rtgen uses the body, i.e. the External/BODY ROI
      when the alias table finds one, else `body_from_ct` (CT > -500 HU, filled, dilated one voxel),
      because dose is deposited only inside the patient.

    Every malformed file gives one `DataError` naming it.
    """
    folder = Path(folder)
    table = aliases if isinstance(aliases, Mapping) else load_aliases(aliases)
    scan = scan_folder(folder)
    series = ct_series(folder, scan)
    ref = series.ref
    structures: dict[str, np.ndarray] = {}
    body = None
    st = matching_rtstruct(scan, ref)
    if st is not None:
        structures, body = _structures(st[0], st[1], ref, table)
    else:
        warnings.warn(f"{folder}: no RTSTRUCT; the patient has no structures", RtgenWarning, stacklevel=2)
    ct = read_ct_volume(series) if (load_ct or body is None) else None
    if body is None:
        body = body_from_ct(ct)
    dose = None
    if load_dose and scan.rtdose:
        rd_path = _pick_rtdose(scan, ref)
        # the one validation layer: finite, >= 0 and below the physical ceiling, like every source
        dose = check_values(rd_path, dose_on_ct_grid(read_rtdose(rd_path), ref), "dose").astype(np.float32)
    return Patient(id=patient_id or folder.name, ct=ct if load_ct else None, dose=dose, possible_dose_mask=body,
                   structures=structures, spacing=ref.spacing)
