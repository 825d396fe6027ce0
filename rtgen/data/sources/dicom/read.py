"""A DICOM patient folder -> an rtgen `Patient`: the CT series, the RTSTRUCT drawn on it (ROIs
matched to rtgen names) and the plan RTDOSE resampled onto the CT grid. This module only decides
which files make the patient; each file is read by the ct, rtstruct and rtdose modules."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from rtgen.core.errors import DataError, RtgenNote, RtgenWarning
from rtgen.core.structures import PRESCRIPTION_GY, STRUCTURES, TARGETS
from rtgen.data.records import Patient
from rtgen.data.sources.dicom.ct import body_from_ct, ct_series, read_ct_volume
from rtgen.data.sources.dicom.folder import Scan, read_header, scan_folder
from rtgen.data.sources.dicom.geometry import CtReference
from rtgen.data.sources.dicom.identity import valid_identity
from rtgen.data.sources.dicom.names import (
    BODY,
    ROI_LEVEL_TOLERANCE,
    aliases_in_use,
    load_aliases,
    match_rois,
    nearest_level,
)
from rtgen.data.sources.dicom.raster import rasterise_contours
from rtgen.data.sources.dicom.rtdose import dose_on_ct_grid, read_rtdose
from rtgen.data.sources.dicom.rtplan import PlanPrescriptions, plan_prescriptions, plans_on
from rtgen.data.sources.dicom.rtstruct import matching_rtstruct, rois_by_number
from rtgen.data.sources.dicom.tags import RT_DOSE_STORAGE, reading, text, uid
from rtgen.data.validate import check_values


def _scan_reference(folder: Path) -> tuple[Scan, CtReference, tuple[Path, object] | None]:
    """(the folder's scan, its CT's reference with the UID of the RTSTRUCT drawn on it, that RTSTRUCT
    as (path, header) or None)."""
    scan = scan_folder(folder)
    ref = ct_series(folder, scan).ref
    st = matching_rtstruct(scan, ref, required=False)
    if st is not None:
        ref = replace(ref, structure_set_uid=uid(st[1], "SOPInstanceUID", st[0]))
    return scan, ref, st


def read_ct_reference(folder: str | Path) -> CtReference:
    """The CT geometry and UIDs of a DICOM patient folder (headers only), for writing doses onto it."""
    return _scan_reference(Path(folder))[1]


def read_dose_reference(folder: str | Path) -> tuple[CtReference, dict[int, tuple[str, np.ndarray]], str | None]:
    """What an RTDOSE written onto a DICOM patient folder refers to: the CT (`read_ct_reference`),
    every ROI of its RTSTRUCT as ROINumber -> (name, its voxels as flat indices on the CT grid), for
    the RT DVH module (empty without an RTSTRUCT), and the SOPInstanceUID of the folder's RTPLAN on
    the CT's frame of reference (None without one, or with several: which plan a prediction belongs
    to is then unknown)."""
    folder = Path(folder)
    scan, ref, st = _scan_reference(folder)
    masks: dict[int, tuple[str, np.ndarray]] = {}
    if st is not None:
        for number, (name, contours) in rois_by_number(st[0], st[1]).items():
            # flat voxel indices rather than masks: a clinical structure set has dozens of ROIs
            masks[number] = (name, np.flatnonzero(rasterise_contours(contours, ref)[0]).astype(np.int32))
    plans = []
    for path, ds in plans_on(scan, ref):
        with reading(path):
            plans.append((path, uid(ds, "SOPInstanceUID", path)))
    if len(plans) > 1:
        warnings.warn(f"{folder}: {len(plans)} RTPLAN files ({', '.join(p.name for p, _ in plans)}); the RTDOSE "
                      "references none of them", RtgenWarning, stacklevel=2)
    return ref, masks, plans[0][1] if len(plans) == 1 else None


_CHOSEN_DOSES: ContextVar[tuple[Path, ...]] = ContextVar("rtgen_chosen_doses", default=())


def choose_doses(files: Iterable[str | Path]) -> object:
    """From now on in this context, a DICOM patient folder that holds one of `files` (RTDOSEs, as `--dose
    FILE` names them) takes that one as its dose, whatever else the folder holds. Returns the token to
    undo it (`chosen_doses` does); the CLI runs each command in a context of its own."""
    return _CHOSEN_DOSES.set(tuple(Path(f).resolve() for f in files))


@contextmanager
def chosen_doses(files: Iterable[str | Path]) -> Iterator[None]:
    """`choose_doses` within the block."""
    token = choose_doses(files)
    try:
        yield
    finally:
        _CHOSEN_DOSES.reset(token)


def check_dose_files(files: Iterable[str | Path], roots: Iterable[str | Path]) -> None:
    """What `--dose FILE` must be, checked before anything is read: an existing RTDOSE (by its SOP Class
    UID or Modality) inside one of `roots` (the DICOM folders the command reads); else DataError."""
    roots = [Path(r).resolve() for r in roots if r is not None]
    for f in files:
        f = Path(f)
        if not f.is_file():
            raise DataError(f, "--dose: not found" if not f.exists() else "--dose: not a file")
        try:
            ds = read_header(f)
        except DataError as e:
            raise DataError(f, f"--dose: {e.problem}") from None
        with reading(f):
            sop, modality = text(ds, "SOPClassUID", f), text(ds, "Modality", f).upper()
        if sop != RT_DOSE_STORAGE and not (modality == "RTDOSE" and not sop):
            raise DataError(f, f"--dose: not an RTDOSE (SOP Class UID {sop or 'none'}, Modality {modality or 'none'})")
        if roots and not any(f.resolve().is_relative_to(r) for r in roots):
            raise DataError(f, f"--dose: not inside {' or '.join(str(r) for r in roots)}; --dose chooses among the "
                               "RTDOSEs of the patient folders read")


@dataclass
class DoseChoice:
    """The RTDOSE a patient's dose is read from, how it was chosen, and the folder's other RTDOSEs."""

    path: Path
    summation: str  # its DoseSummationType
    how: str  # "only", "PLAN" (the one plan dose) or "--dose"
    left: list[tuple[Path, str]] = field(default_factory=list)  # (path, DoseSummationType) not used

    def describe(self) -> str:
        s = f"{self.path.name} ({self.summation or 'no DoseSummationType'})"
        if self.left:
            s += "; not used: " + ", ".join(f"{p.name} ({t or '?'})" for p, t in self.left)
        return s


def pick_rtdose(scan: Scan, ref: CtReference, folder: Path | None = None) -> DoseChoice | None:
    """The RTDOSE of the patient (None without one). One RTDOSE is the dose; of several, the one chosen
    with `--dose FILE` (`chosen_doses`), else the one whose DoseSummationType is PLAN (a plan's dose, before
    BEAM doses and any other), said in an RtgenNote naming the others. Several PLAN doses, or several
    doses of which none is PLAN: DataError listing them and pointing to --dose."""
    cands = []
    for path, ds in scan.rtdose:
        with reading(path):
            cands.append((path, text(ds, "DoseSummationType", path).upper()))
    if not cands:
        return None
    chosen = set(_CHOSEN_DOSES.get())
    picked = [(p, t) for p, t in cands if p.resolve() in chosen]
    where = folder or cands[0][0].parent
    if len(picked) > 1:
        raise DataError(where, f"--dose names {len(picked)} RTDOSEs of one patient "
                               f"({', '.join(p.name for p, _ in picked)}); name one")
    plans = [(p, t) for p, t in cands if t == "PLAN"]
    if picked:
        choice = DoseChoice(*picked[0], "--dose")
    elif len(cands) == 1:
        choice = DoseChoice(*cands[0], "only")
    elif len(plans) == 1:
        choice = DoseChoice(*plans[0], "PLAN")
    else:
        listed = ", ".join(f"{p} ({t or 'no DoseSummationType'})" for p, t in (plans if len(plans) > 1 else cands))
        why = f"{len(plans)} plan doses (DoseSummationType PLAN)" if len(plans) > 1 else \
            f"{len(cands)} RTDOSEs and none is a plan dose (DoseSummationType PLAN)"
        raise DataError(where, f"{why}: {listed}; choose one with --dose FILE")
    choice.left = [(p, t) for p, t in cands if p != choice.path]
    with reading(choice.path):
        fo = text(dict(scan.rtdose)[choice.path], "FrameOfReferenceUID", choice.path)
    if fo and fo != ref.frame_of_reference_uid:
        raise DataError(choice.path, f"RTDOSE on frame of reference {fo}, the CT's is {ref.frame_of_reference_uid}")
    if choice.how == "PLAN":
        warnings.warn(f"{where}: {len(cands)} RTDOSEs: using the plan dose {choice.describe()} "
                      "(--dose FILE chooses another)", RtgenNote, stacklevel=3)
    return choice


def _structures(st_path: Path, st_ds, ref: CtReference, table, scan: Scan, require_target: bool = False
                ) -> tuple[dict[str, np.ndarray], np.ndarray | None, dict[str, str], list[str]]:
    """(rtgen structures, body mask or None, {rtgen name: ROI name}, unmatched ROI names) from the
    RTSTRUCT at `st_path` (its header is the whole file), targets at the levels the folder's RTPLAN
    prescribes when it has one (`plan_prescriptions`)."""
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
        warnings.warn(f"{st_path}: {note}", RtgenWarning, stacklevel=4)
    if not any(t in matched for t in TARGETS):
        problem = no_target_message(list(found), plan, matched.values())
        if require_target:
            raise DataError(st_path, problem)
        warnings.warn(f"{st_path}: {problem}", RtgenWarning, stacklevel=4)
    if unmatched:
        warnings.warn(f"{st_path}: ROIs not matched to rtgen structures, not used (name them in an alias file "
                      f"to use them): {', '.join(repr(u) for u in unmatched)}", RtgenWarning, stacklevel=4)
    structures, body = {}, None
    for target, roi in matched.items():
        mask, off = rasterise_contours(found[roi], ref)
        if off:
            warnings.warn(f"{st_path}: ROI {roi!r}: {off} contour(s) outside the CT's slices skipped",
                          RtgenWarning, stacklevel=4)
        if target == BODY:
            body = mask
        else:
            structures[target] = mask
    return {n: structures[n] for n in STRUCTURES if n in structures}, body, matched, unmatched


@dataclass
class DicomCase:
    """A DICOM patient as read, with what a physicist checks about the reading: which RTSTRUCT, which
    ROIs became which rtgen structure and which matched nothing, and which RTDOSE (if any) is the dose."""

    patient: Patient
    folder: Path
    rtstruct: Path | None = None
    matched: dict[str, str] = field(default_factory=dict)  # rtgen name (or possible_dose_mask) -> ROI name
    unmatched: list[str] = field(default_factory=list)
    dose: DoseChoice | None = None


def prescription(case: DicomCase) -> dict[str, float]:
    """The prescription of a DICOM patient as the reading used it, target -> Gy: the level of each
    target it matched (`case.matched`: by an alias, else the RTPLAN's prescription, else the ROI's
    name; a PTV prescribed 66 Gy is PTV63, 63 Gy, the dose a model predicts in it). For the cohort
    summary of `convert from-dicom`."""
    return {t: PRESCRIPTION_GY[t] for t in TARGETS if t in case.matched}


def read_dicom_case(folder: str | Path, load_ct: bool = True, load_dose: bool = True,
                    aliases: Mapping[str, Sequence[str]] | str | Path | None = None,
                    patient_id: str | None = None, files: Sequence[Path] | None = None,
                    require_target: bool = False) -> DicomCase:
    """`read_dicom_patient`, with what the reading found (a `DicomCase`). `files` restricts the patient
    to those files of `folder` (one patient of a flat export holding several)."""
    folder = Path(folder)
    table = aliases if isinstance(aliases, Mapping) else aliases_in_use() if aliases is None else load_aliases(aliases)
    scan = scan_folder(folder, files)
    series = ct_series(folder, scan)
    ref = series.ref
    valid_identity(ref, series.files[0])  # warns of invalid identity values, which the writers drop
    structures: dict[str, np.ndarray] = {}
    body = None
    matched: dict[str, str] = {}
    unmatched: list[str] = []
    st = matching_rtstruct(scan, ref)
    if st is not None:
        structures, body, matched, unmatched = _structures(st[0], st[1], ref, table, scan, require_target)
    elif require_target:
        raise DataError(folder, "no RTSTRUCT, so no target: a dose is predicted from the patient's PTVs; export "
                                "the structure set with the CT")
    else:
        warnings.warn(f"{folder}: no RTSTRUCT; the patient has no structures", RtgenWarning, stacklevel=3)
    ct = read_ct_volume(series) if (load_ct or body is None) else None
    if body is None:
        body = body_from_ct(ct)
    dose = None
    choice = pick_rtdose(scan, ref, folder) if load_dose else None
    if choice is not None:
        # the one validation layer: finite, >= 0 and below the physical ceiling, like every source
        dose = check_values(choice.path, dose_on_ct_grid(read_rtdose(choice.path), ref), "dose").astype(np.float32)
    patient = Patient(id=patient_id or folder.name, ct=ct if load_ct else None, dose=dose, possible_dose_mask=body,
                      structures=structures, spacing=ref.spacing)
    return DicomCase(patient, folder, st[0] if st is not None else None, matched, unmatched, choice)


def no_target_message(names: Sequence[str], plan: PlanPrescriptions | None = None,
                      read_as: Iterable[str] = ()) -> str:
    """Why a dose cannot be predicted from these ROIs, with the names found and an alias file that
    would map one: the ROI the plan prescribes to (at the level nearest its prescription, PTV70 when
    none is near, which is then said), else a ROI whose name starts with PTV, else the first ROI not
    `read_as` an organ or the body (never the body as a target), else the first."""
    hint_roi, level, said = None, "PTV70", ""
    off_level = [(roi, dose) for roi, dose in (plan.by_roi.items() if plan is not None else ()) if roi in names]
    for roi, dose in off_level:
        if (lv := nearest_level(dose)[0]) is not None:
            hint_roi, level = roi, lv
            break
    if hint_roi is None and off_level:
        hint_roi, dose = off_level[0]
        said = (f"; the RTPLAN prescribes {dose:g} Gy to {hint_roi!r}, more than {ROI_LEVEL_TOLERANCE:.0%} from "
                "56, 63 and 70 Gy, the levels rtgen's models know")
    read_as = set(read_as)
    if hint_roi is None:
        hint_roi = next((n for n in names if n.strip().lower().startswith("ptv")), None) or \
            next((n for n in names if n not in read_as), names[0] if names else "PTV_main")
    shown = ", ".join(repr(n) for n in names[:40]) + (f" and {len(names) - 40} more" if len(names) > 40 else "")
    return (f"no target: none of its ROIs reads as PTV56, PTV63 or PTV70 (a PTV named with its dose, PTV_7000, "
            f"PTV70 or PTV_70Gy, or prescribed by an RTPLAN), and a dose is predicted from its targets; ROIs found: "
            f"{shown or 'none'}{said}; map the PTV with --aliases aliases.yaml holding `{level}: [{hint_roi}]`")


def read_dicom_patient(folder: str | Path, load_ct: bool = True, load_dose: bool = True,
                       aliases: Mapping[str, Sequence[str]] | str | Path | None = None,
                       patient_id: str | None = None, require_target: bool = False,
                       dose_file: str | Path | None = None) -> Patient:
    """Read a DICOM patient folder (CT series, optional RTSTRUCT and RTDOSE) into a `Patient`.

    - CT: int16 HU after RescaleSlope/Intercept, in the axis convention of the package docstring.
    - Structures: RTSTRUCT ROIs matched to rtgen names by `aliases` (a mapping, or a JSON/YAML file for
      `load_aliases`; None: the table of the enclosing `using_aliases` block, else the default one);
      ROIs that match nothing are listed in an RtgenWarning. A PTV's level (PTV56, PTV63, PTV70) is
      the folder's RTPLAN's prescription when it gives one, else the dose in its name.
    - require_target: a patient with no target (no ROI read as PTV56, PTV63 or PTV70) is a DataError
      that lists its ROIs and how to map one (for a dose prediction); else an RtgenWarning.
    - Dose: the RTDOSE resampled onto the CT grid (None without one or with load_dose=False). Of
      several RTDOSEs, `dose_file` if given, else the plan dose (see `pick_rtdose`).
    - possible_dose_mask: DICOM has no such thing; rtgen uses the body, i.e. the External/BODY ROI
      when the alias table finds one, else `body_from_ct` (CT > -500 HU, filled, dilated one voxel),
      because dose is deposited only inside the patient.

    Every malformed file gives one `DataError` naming it.
    """
    if dose_file is not None:
        check_dose_files([dose_file], [folder])
    with chosen_doses([dose_file]) if dose_file is not None else nullcontext():
        return read_dicom_case(folder, load_ct, load_dose, aliases, patient_id, require_target=require_target).patient
