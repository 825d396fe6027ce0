"""Finding the DICOM files of a patient folder (any nesting, with or without a .dcm suffix) and
sorting their headers into CT slices, RTSTRUCTs and RTDOSEs. Only headers are read here; what the
files mean is interpreted by the ct, rtstruct and rtdose modules."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rtgen.core.errors import DataError, RtgenWarning
from rtgen.data.sources.dicom.tags import (
    CT_IMAGE_STORAGE,
    MEDIA_STORAGE_DIRECTORY,
    RT_DOSE_STORAGE,
    RT_PLAN_STORAGE,
    RT_STRUCTURE_SET_STORAGE,
    reading,
    text,
)

# What a file is follows its SOP Class UID, which says which IOD it holds; Modality only when the SOP
# class is not one of these (an export that writes the wrong Modality still holds the right object)
_KIND_OF_SOP_CLASS = {CT_IMAGE_STORAGE: "CT", RT_STRUCTURE_SET_STORAGE: "RTSTRUCT", RT_DOSE_STORAGE: "RTDOSE",
                      RT_PLAN_STORAGE: "RTPLAN"}


def _has_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


_DICOM_SUFFIXES = {".dcm", ".dicom", ".ima", ""}


def _looks_dicom(path: Path) -> bool:
    return path.suffix.lower() == ".dcm" or _has_preamble(path)


def _walk_files(folder: Path) -> Iterable[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def is_dicom_dir(folder: str | Path, max_checked: int = 64) -> bool:
    """True if `folder` holds a DICOM file (a .dcm suffix or the DICM preamble), at any depth.

    Cheap: stops at the first hit and sniffs at most `max_checked` files without a .dcm suffix.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return False
    checked = 0
    for path in _walk_files(folder):
        if path.suffix.lower() == ".dcm":
            return True
        if checked < max_checked:
            checked += 1
            if _has_preamble(path):
                return True
    return False


def _first_dicom(folder: Path) -> Path | None:
    return next((p for p in _walk_files(folder) if _looks_dicom(p)), None)


def is_dicom_patient_dir(folder: str | Path) -> bool:
    """One DICOM patient, as opposed to a split of them: a folder with DICOM files directly in it, or
    with several subfolders holding DICOM files of one PatientID (CT/, RTSTRUCT/ ...). A folder whose
    DICOM files are all in one subfolder is a split of that one patient, so `EXPORT/pt_1/...` is named
    pt_1 by every command; subfolders of different PatientIDs are a split too. (`load_patient` reads
    any folder with DICOM files below it, whatever this says.)"""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    if any(p.is_file() and _looks_dicom(p) for p in folder.iterdir() if not p.name.startswith(".")):
        return True
    subs = [d for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    firsts = [f for f in (_first_dicom(d) for d in subs) if f is not None]
    if len(firsts) <= 1:
        return False
    import pydicom

    ids = set()
    for f in firsts:
        try:
            ids.add(str(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["PatientID"], force=True)
                        .get("PatientID", "")))
        except Exception:  # noqa: BLE001, S112 - an unreadable file is reported when the patient is read, not here
            continue
    return len(ids) <= 1


@dataclass
class Scan:
    ct: dict[str, list[tuple[Path, object]]] = field(default_factory=dict)  # series UID -> [(path, header)]
    rtstruct: list[tuple[Path, object]] = field(default_factory=list)
    rtdose: list[tuple[Path, object]] = field(default_factory=list)
    rtplan: list[tuple[Path, object]] = field(default_factory=list)  # referenced by an RTDOSE rtgen writes
    ignored: list[str] = field(default_factory=list)
    other: list[tuple[Path, str]] = field(default_factory=list)  # (path, why) of DICOM files with a garbled modality


def read_header(path: Path):
    """The header of a DICOM file, or DataError if it is not one. Files without the 128-byte preamble
    (older exports, pydicom's own rtstruct.dcm) are read with force=True and must then hold an SOP class."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        pass
    except Exception as e:  # noqa: BLE001 - the parser's own error types vary with the damage
        raise DataError(path, f"not a readable DICOM file ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        ok = "SOPClassUID" in ds and "Modality" in ds
    except Exception:  # noqa: BLE001 - whatever it is, it is not a DICOM file
        ok = False
    if not ok:
        raise DataError(path, "not a DICOM file (no DICM preamble and no DICOM header)")
    return ds


def scan_folder(folder: Path, files: Iterable[Path] | None = None) -> Scan:
    """Every DICOM file below `folder` (or only `files`), sorted by kind; other files are listed in an
    RtgenWarning."""
    if not folder.is_dir():
        raise DataError(folder, "DICOM folder not found")
    scan = Scan()
    for path in _walk_files(folder) if files is None else files:
        if not _has_preamble(path) and path.suffix.lower() not in _DICOM_SUFFIXES:
            scan.ignored.append(path.name)  # README.txt, .xml manifests and the like
            continue
        ds = read_header(path)
        with reading(path):
            sop = text(ds, "SOPClassUID", path)
            modality = text(ds, "Modality", path).upper()
            if sop == MEDIA_STORAGE_DIRECTORY:
                continue
            if not sop and not modality:
                raise DataError(path, "DICOM header without SOPClassUID and Modality (a damaged or truncated file?)")
            kind = _KIND_OF_SOP_CLASS.get(sop, modality)
            if kind != modality and modality:
                warnings.warn(f"{path}: Modality {modality!r} but SOP Class UID {sop} ({kind}): read as {kind}",
                              RtgenWarning, stacklevel=3)
            if kind == "CT":
                scan.ct.setdefault(text(ds, "SeriesInstanceUID", path), []).append((path, ds))
            elif kind == "RTSTRUCT":
                scan.rtstruct.append((path, ds))
            elif kind == "RTDOSE":
                scan.rtdose.append((path, ds))
            elif kind == "RTPLAN":
                scan.rtplan.append((path, ds))
            else:
                scan.ignored.append(f"{path.name} ({modality or 'no modality'})")
                if not re.fullmatch(r"[A-Z0-9_ ]{2,16}", modality):  # no or a garbled modality: a damaged file?
                    scan.other.append((path, f"Modality {modality!r}, SOPClassUID {sop!r}"))
    if scan.ignored:
        shown = ", ".join(scan.ignored[:8]) + (f" and {len(scan.ignored) - 8} more" if len(scan.ignored) > 8 else "")
        warnings.warn(f"{folder}: ignored files that are not CT, RTSTRUCT, RTDOSE or RTPLAN: {shown}", RtgenWarning,
                      stacklevel=3)
    return scan
