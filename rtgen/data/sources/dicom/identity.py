"""Patient identity in the files rtgen writes: the values copied from a CT (name, ID, birth date, sex,
study date and numbers) only when each is valid for its value representation, and fresh identifiers
for an anonymized copy. A value a planning system would reject (PatientSex "Male", a birth date of
"1970-01-01") is dropped, never written: the tag stays, empty, as its type 2 allows."""

from __future__ import annotations

import datetime as _dt
import re
import secrets
import warnings
from dataclasses import replace
from pathlib import Path

from rtgen.core.errors import RtgenWarning
from rtgen.data.sources.dicom.geometry import CtReference

DEIDENTIFICATION_METHOD = "rtgen anonymize: new name, ID and UIDs; dates, sex removed"  # LO: 64 characters


def _text_ok(v: str, limit: int) -> bool:
    """A single string value of at most `limit` characters: no backslash (the value separator) and no
    control character."""
    return len(v) <= limit and "\\" not in v and not any(ord(c) < 32 for c in v)


def valid_da(v: str) -> bool:
    """A DICOM date (DA): YYYYMMDD, a day of the calendar."""
    if not re.fullmatch(r"\d{8}", v):
        return False
    try:
        _dt.date(int(v[:4]), int(v[4:6]), int(v[6:]))
    except ValueError:
        return False
    return True


def valid_tm(v: str) -> bool:
    """A DICOM time (TM): HH[MM[SS[.F{1,6}]]]."""
    m = re.fullmatch(r"(\d{2})(?:(\d{2})(?:(\d{2})(?:\.\d{1,6})?)?)?", v)
    return bool(m) and int(m[1]) < 24 and int(m[2] or 0) < 60 and int(m[3] or 0) < 61


def valid_pn(v: str) -> bool:
    """A DICOM person name (PN): at most 3 component groups (=), each at most 64 characters and 5
    components (^), one value (no backslash), no control character but ESC (character sets)."""
    groups = v.split("=")
    return (len(groups) <= 3 and "\\" not in v and not any(ord(c) < 32 and c != "\x1b" for c in v)
            and all(len(g) <= 64 and g.count("^") <= 4 for g in groups))


_CHECKS = {  # CtReference field -> (DICOM keyword, check)
    "patient_name": ("PatientName", valid_pn),
    "patient_id": ("PatientID", lambda v: _text_ok(v, 64)),
    "patient_birth_date": ("PatientBirthDate", valid_da),
    "patient_sex": ("PatientSex", lambda v: v in ("M", "F", "O")),
    "study_date": ("StudyDate", valid_da),
    "study_time": ("StudyTime", valid_tm),
    "study_id": ("StudyID", lambda v: _text_ok(v, 16)),
    "accession_number": ("AccessionNumber", lambda v: _text_ok(v, 16)),
}


def invalid_identity(ref: CtReference) -> dict[str, str]:
    """{CtReference field: value} of the identity values of `ref` that are not valid (empty ones are)."""
    return {f: getattr(ref, f) for f, (_, ok) in _CHECKS.items() if getattr(ref, f) and not ok(getattr(ref, f))}


def valid_identity(ref: CtReference, source: str | Path | None = None) -> CtReference:
    """`ref` with every invalid identity value emptied; with `source` (the file they were read from) the
    dropped values are named in one RtgenWarning."""
    bad = invalid_identity(ref)
    if not bad:
        return ref
    if source is not None:
        shown = ", ".join(f"{_CHECKS[f][0]} {v!r}" for f, v in bad.items())
        warnings.warn(f"{source}: invalid {shown}: not copied to the files rtgen writes", RtgenWarning, stacklevel=4)
    return replace(ref, **dict.fromkeys(bad, ""))


def anonymized(ref: CtReference) -> CtReference:
    """A copy of `ref` with fresh identifiers: PatientID "ANON-" and 8 random hex digits, PatientName
    the same as family and given name ("ANON^" and the digits: a name of one component is the retired
    PN form that validators warn about), new study, series, frame of reference and CT slice UIDs (every object written on it shares
    them), and the patient's dates, sex and the study's numbers removed (emptied: type 2). The dates
    rtgen stamps on what it writes (InstanceCreationDate, ContentDate) are the day of writing, which
    says nothing about the patient, and are kept."""
    from pydicom.uid import generate_uid

    digits = secrets.token_hex(4).upper()
    return replace(ref, patient_id=f"ANON-{digits}", patient_name=f"ANON^{digits}", study_uid=generate_uid(), series_uid=generate_uid(),
                   frame_of_reference_uid=generate_uid(),
                   sop_instance_uids=tuple(generate_uid() for _ in ref.sop_instance_uids),
                   structure_set_uid=None, study_date="", study_time="", study_id="", accession_number="",
                   patient_birth_date="", patient_sex="", anonymized=True)
