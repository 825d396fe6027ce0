"""A cohort export: the DICOM patients under one folder, whether each has a folder of its own or every
patient's files lie together in one flat folder (as a PACS query or a TPS batch export writes them).
Files are sorted into patients by PatientID, and a patient's studies are kept apart when each holds a
CT series of its own. Only a few header tags are read here; each patient is read by `read`."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from rtgen.core.errors import DataError
from rtgen.data.sources.dicom.folder import _DICOM_SUFFIXES, _has_preamble, _walk_files, is_dicom_dir
from rtgen.data.sources.dicom.tags import CT_IMAGE_STORAGE, MEDIA_STORAGE_DIRECTORY


@dataclass
class CohortEntry:
    """One patient of a cohort: its name (for outputs), its folder, and the files that are its own
    when the folder holds other patients' files too (None: every file of the folder). `error`: why it
    cannot be a patient (files whose header cannot be read, so cannot be sorted), reported in the batch."""

    name: str
    folder: Path
    files: list[Path] | None = None
    error: DataError | None = None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "patient"


def _candidates(folder: Path) -> list[Path]:
    return [p for p in _walk_files(folder) if _has_preamble(p) or p.suffix.lower() in _DICOM_SUFFIXES]


def _split(folder: Path) -> list[CohortEntry]:
    """The patients among the DICOM files below `folder`: one entry (every file) when they are one
    patient's, else one per PatientID, or per (PatientID, study) where each of its studies holds a CT."""
    import pydicom

    groups: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    ct_studies: dict[str, set[str]] = defaultdict(set)
    unreadable: list[tuple[Path, str]] = []
    for path in _candidates(folder):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True,
                                 specific_tags=["PatientID", "StudyInstanceUID", "SOPClassUID", "Modality"])
            sop = str(ds.get("SOPClassUID", "") or "")
            pid, study = str(ds.get("PatientID", "") or "").strip(), str(ds.get("StudyInstanceUID", "") or "")
            if not sop and not ds.get("Modality"):
                raise ValueError("no DICOM header")
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported, whatever pydicom raised
            unreadable.append((path, f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"))
            continue
        if sop == MEDIA_STORAGE_DIRECTORY:
            continue
        groups[pid][study].append(path)
        if sop == CT_IMAGE_STORAGE or (not sop and str(ds.get("Modality", "")).upper() == "CT"):
            ct_studies[pid].add(study)
    patients: list[tuple[str, list[Path]]] = []
    for pid in sorted(groups):
        studies = groups[pid]
        if len(studies) > 1 and set(studies) <= ct_studies[pid]:  # several planning CTs: one case each
            for n, study in enumerate(sorted(studies), start=1):
                patients.append((f"{pid}_study{n}", studies[study]))
        else:
            patients.append((pid, [p for files in studies.values() for p in files]))
    if len(patients) <= 1:  # one patient: read as a whole, so that an unreadable file is refused there
        return [CohortEntry(folder.name, folder)]
    entries: list[CohortEntry] = []
    used: set[str] = set()
    for pid, files in patients:
        name = _safe(pid) if pid else f"{folder.name}_no_patient_id"
        while name in used:
            name += "_"
        used.add(name)
        entries.append(CohortEntry(name, folder, sorted(files)))
    if unreadable:
        shown = "; ".join(f"{p.name} ({why})" for p, why in unreadable[:3])
        more = f" and {len(unreadable) - 3} more" if len(unreadable) > 3 else ""
        entries.append(CohortEntry(f"{folder.name} (unsorted files)", folder, error=DataError(
            unreadable[0][0], f"{len(unreadable)} file(s) whose header cannot be read, so not sorted into a patient: "
                              f"{shown}{more}")))
    return entries


def dicom_cohort(root: str | Path) -> list[CohortEntry]:
    """The DICOM patients under `root`: `root` itself when it is one patient's export; else each
    subfolder (a patient, or itself a flat export of several); a flat folder of several patients'
    files is sorted by PatientID (and study, where each study has a CT). A subfolder without any DICOM
    file is kept as an entry, so reading it fails with its reason instead of being skipped unseen."""
    from rtgen.data.sources.dicom.folder import is_dicom_patient_dir

    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "DICOM folder not found" if not root.exists() else "is not a folder")
    if is_dicom_patient_dir(root):
        return _split(root)
    subs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    if not subs or not any(is_dicom_dir(d) for d in subs):
        raise DataError(root, "holds no DICOM files (a patient's CT series and RTSTRUCT, or one folder per patient)")
    entries: list[CohortEntry] = []
    for d in subs:
        entries += _split(d) if is_dicom_dir(d) else [CohortEntry(d.name, d)]
    return entries
