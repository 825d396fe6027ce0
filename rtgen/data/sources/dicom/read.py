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
from rtgen.core.structures import STRUCTURES, TARGETS
from rtgen.data.records import Patient
from rtgen.data.sources.dicom.ct import body_from_ct, ct_series, read_ct_volume
from rtgen.data.sources.dicom.folder import Scan, scan_folder
from rtgen.data.sources.dicom.geometry import CtReference
from rtgen.data.sources.dicom.names import BODY, aliases_in_use, load_aliases, match_rois, nearest_level
from rtgen.data.sources.dicom.raster import rasterise_contours
from rtgen.data.sources.dicom.rtdose import dose_on_ct_grid, read_rtdose
from rtgen.data.sources.dicom.rtplan import PlanPrescriptions, plan_prescriptions
from rtgen.data.sources.dicom.rtstruct import matching_rtstruct, rois_by_number
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


def _structures(st_path: Path, st_ds, ref: CtReference, table, scan: Scan, require_target: bool = False
                ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """(rtgen structures, body mask or None) from the RTSTRUCT at `st_path` (its header is the whole file),
    targets at the levels the folder's RTPLAN prescribes when it has one (`plan_prescriptions`)."""
    by_number = rois_by_number(st_path, st_ds)
    found: dict[str, list[np.ndarray]] = {}
    for name, contours in by_number.values():  # ROIs of the same name are merged
        found.setdefault(name, []).extend(contours)
    with reading(st_path):
        st_uid = text(st_ds, "SOPInstanceUID", st_path)
    plan = plan_prescriptions(scan, ref, st_uid, {n: name for n, (name, _) in by_number.items()})
    source = f"RTPLAN {plan.path.name}" if plan.path is not None else "no RTPLAN"
    matched, unmatched, notes = match_rois(list(found), table, plan.by_roi, plan=source)
    for note in notes:
        warnings.warn(f"{st_path}: {note}", RtgenWarning, stacklevel=3)
    if not any(t in matched for t in TARGETS):
        problem = no_target_message(list(found), plan)
        if require_target:
            raise DataError(st_path, problem)
        warnings.warn(f"{st_path}: {problem}", RtgenWarning, stacklevel=3)
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


def no_target_message(names: Sequence[str], plan: PlanPrescriptions | None = None) -> str:
    """Why a dose cannot be predicted from these ROIs, with the names found and an alias file that
    would map one (the ROI the plan prescribes to, else a ROI whose name starts with PTV, else the first)."""
    hint_roi, level = None, "PTV70"
    for roi, dose in (plan.by_roi.items() if plan is not None else ()):
        if roi in names and (lv := nearest_level(dose)[0]) is not None:
            hint_roi, level = roi, lv
            break
    if hint_roi is None:
        hint_roi = next((n for n in names if n.strip().lower().startswith("ptv")), names[0] if names else "PTV_main")
    shown = ", ".join(repr(n) for n in names[:40]) + (f" and {len(names) - 40} more" if len(names) > 40 else "")
    return (f"no target: none of its ROIs reads as PTV56, PTV63 or PTV70 (a PTV named with its dose, PTV_7000, "
            f"PTV70 or PTV_70Gy, or prescribed by an RTPLAN), and a dose is predicted from its targets; ROIs found: "
            f"{shown or 'none'}; map the PTV with --aliases aliases.yaml holding `{level}: [{hint_roi}]`")


def read_dicom_patient(folder: str | Path, load_ct: bool = True, load_dose: bool = True,
                       aliases: Mapping[str, Sequence[str]] | str | Path | None = None,
                       patient_id: str | None = None, require_target: bool = False) -> Patient:
    """Read a DICOM patient folder (CT series, optional RTSTRUCT and RTDOSE) into a `Patient`.

    - CT: int16 HU after RescaleSlope/Intercept, in the axis convention of the package docstring.
    - Structures: RTSTRUCT ROIs matched to rtgen names by `aliases` (a mapping, or a JSON/YAML file for
      `load_aliases`; None: the table of the enclosing `using_aliases` block, else the default one);
      ROIs that match nothing are listed in an RtgenWarning. A PTV's level (PTV56, PTV63, PTV70) is
      the folder's RTPLAN's prescription when it gives one, else the dose in its name.
    - require_target: a patient with no target (no ROI read as PTV56, PTV63 or PTV70) is a DataError
      that lists its ROIs and how to map one (for a dose prediction); else an RtgenWarning.
    - Dose: the RTDOSE resampled onto the CT grid (None without one or with load_dose=False).
    - possible_dose_mask: DICOM has no such thing; rtgen uses the body, i.e. the External/BODY ROI
      when the alias table finds one, else `body_from_ct` (CT > -500 HU, filled, dilated one voxel),
      because dose is deposited only inside the patient.

    Every malformed file gives one `DataError` naming it.
    """
    folder = Path(folder)
    table = aliases if isinstance(aliases, Mapping) else aliases_in_use() if aliases is None else load_aliases(aliases)
    scan = scan_folder(folder)
    series = ct_series(folder, scan)
    ref = series.ref
    structures: dict[str, np.ndarray] = {}
    body = None
    st = matching_rtstruct(scan, ref)
    if st is not None:
        structures, body = _structures(st[0], st[1], ref, table, scan, require_target)
    elif require_target:
        raise DataError(folder, "no RTSTRUCT, so no target: a dose is predicted from the patient's PTVs; export "
                                "the structure set with the CT")
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
