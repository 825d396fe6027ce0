"""RTPLAN reading: the prescription of each target, from the plan's DoseReferenceSequence, for reading
a PTV's dose level from the plan rather than from its name (see `names.match_rois`)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rtgen.core.errors import RtgenWarning
from rtgen.data.sources.dicom.folder import Scan
from rtgen.data.sources.dicom.geometry import CtReference
from rtgen.data.sources.dicom.names import normalise_roi_name, ptv_dose_gy
from rtgen.data.sources.dicom.tags import integer, number, reading, sequence, text


@dataclass
class PlanPrescriptions:
    """What an RTPLAN prescribes: ROI name -> TargetPrescriptionDose in Gy (`by_roi`), from the plan
    file `path` (None: no plan, or none that rtgen can attribute)."""

    path: Path | None = None
    by_roi: dict[str, float] = field(default_factory=dict)


def plans_on(scan: Scan, ref: CtReference) -> list[tuple[Path, object]]:
    """(path, header) of the folder's RTPLANs on the CT's frame of reference."""
    plans = []
    for path, ds in scan.rtplan:
        with reading(path):
            fo = text(ds, "FrameOfReferenceUID", path)
        if fo in ("", ref.frame_of_reference_uid):  # the RT Plan IOD may leave its frame of reference out
            plans.append((path, ds))
    return plans


def plan_prescriptions(scan: Scan, ref: CtReference, structure_set_uid: str,
                       roi_names: Mapping[int, str]) -> PlanPrescriptions:
    """The prescriptions of the one RTPLAN on the CT's frame of reference, attributed to the ROIs
    `roi_names` (ROINumber -> name) of the structure set `structure_set_uid`.

    Each TARGET item of the DoseReferenceSequence with a TargetPrescriptionDose goes to its
    ReferencedROINumber (when the plan refers to this structure set or to none), else to the ROI named
    by its DoseReferenceDescription. A prescription with neither (a site or a reference point) goes to
    the one PTV left without one, if there is exactly one such PTV and one such prescription: with
    more, which is which is unknown and the PTVs' names decide. Several plans on the CT (a plan per
    phase?) are not summed: a warning, and the names decide.
    """
    plans = plans_on(scan, ref)
    if not plans:
        return PlanPrescriptions()
    if len(plans) > 1:
        warnings.warn(f"{len(plans)} RTPLAN files on the CT ({', '.join(p.name for p, _ in plans)}): prescriptions "
                      "taken from the PTVs' names, not from a plan", RtgenWarning, stacklevel=3)
        return PlanPrescriptions()
    path, ds = plans[0]
    out = PlanPrescriptions(path)
    by_name = {normalise_roi_name(n): n for n in roi_names.values()}
    site: set[float] = set()
    with reading(path):
        refs = [text(r, "ReferencedSOPInstanceUID", path, where="ReferencedStructureSetSequence")
                for r in sequence(ds, "ReferencedStructureSetSequence", path)]
        numbers_apply = not refs or structure_set_uid in refs
        if not numbers_apply:
            warnings.warn(f"{path}: RTPLAN refers to structure set {refs[0]}, not the RTSTRUCT read "
                          f"({structure_set_uid}): its ROI references are not used", RtgenWarning, stacklevel=3)
        for i, item in enumerate(sequence(ds, "DoseReferenceSequence", path), start=1):
            where = f"DoseReferenceSequence item {i}"
            if text(item, "DoseReferenceType", path, where=where).upper() != "TARGET":
                continue  # ORGAN_AT_RISK: a constraint, not a prescription
            if "TargetPrescriptionDose" not in item:
                continue
            dose = number(item, "TargetPrescriptionDose", path, where)
            if dose <= 0:
                continue
            roi = None
            if "ReferencedROINumber" in item:
                if not numbers_apply:
                    continue  # an ROI of another structure set: not a site either
                roi = roi_names.get(integer(item, "ReferencedROINumber", path, where))
            if roi is None:
                roi = by_name.get(normalise_roi_name(text(item, "DoseReferenceDescription", path, where=where)))
            if roi is not None:
                out.by_roi[roi] = dose
            else:
                site.add(round(dose, 4))
    if len(site) == 1:
        left = [n for n in roi_names.values() if ptv_dose_gy(n) is not False and n not in out.by_roi]
        if len(set(left)) == 1:
            out.by_roi[left[0]] = site.pop()
    return out
