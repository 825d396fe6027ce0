"""One patient folder from files to a registered, QA-checked pair; and the QA ledger of a batch.

A pair that fails QA gets no patient folder, so nothing downstream (training, evaluation) can pick
it up by listing the output; its checkerboard goes to `OUT/rejected/<split>__<patient>.png` for a
look, and `registration_qa.json` says why."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import SimpleITK as sitk

from rtgen.core.atomic import atomic_write_text
from rtgen.core.errors import DataError
from rtgen.data.registration.folders import PairFiles, load_pair, write_pair
from rtgen.data.registration.pair import RegistrationError, RegistrationSettings, register_pair
from rtgen.data.registration.qa import PairQA, QAThresholds, assess, checkerboard_png

REJECTED = "rejected"
QA_FILE = "registration_qa.json"


@dataclass
class PatientReport:
    patient: str  # path under the data folder, e.g. train/STS_002
    status: str  # "ok", "failed QA" or "error"
    seconds: float = 0.0
    output: str | None = None  # the patient folder or, when rejected, the checkerboard, relative to OUT
    qa: PairQA | None = None
    rotation_deg: float | None = None
    translation_mm: float | None = None
    rigid_ok: bool | None = None
    bspline_ok: bool | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "qa"}
        d.update(self.qa.as_dict() if self.qa is not None else {})
        d["passed"] = self.qa.passed if self.qa is not None else False
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


def _itk_reason(e: RuntimeError) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:200]


def register_patient(files: PairFiles, out_root: Path, settings: RegistrationSettings = RegistrationSettings(),
                     thresholds: QAThresholds = QAThresholds(), keep_failed: bool = False) -> PatientReport:
    """Register, score and write one pair; errors in the input raise DataError naming the file.
    `keep_failed` writes a pair that fails QA too (prediction: the best alignment there is, flagged)."""
    start = time.perf_counter()
    pair = load_pair(files)
    try:
        result = register_pair(pair.ct, pair.mr, pair.ct_tumour, pair.mr_tumour, pair.body, settings)
    except RegistrationError as e:
        raise DataError(files.folder, str(e)) from None
    except RuntimeError as e:  # ITK: e.g. the images do not overlap at all
        raise DataError(files.folder, f"registration failed: {_itk_reason(e)}") from None
    qa = assess(pair.ct, pair.mr, result, pair.ct_tumour, pair.mr_tumour, thresholds)
    if qa.passed or keep_failed:
        write_pair(out_root / files.rel, files, pair, result)
        output = files.rel.as_posix()
    if not qa.passed:
        png = Path(REJECTED) / (files.rel.as_posix().replace("/", "__") + ".png")
        checkerboard_png(out_root / png, pair.ct, pair.mr, result, pair.mr_tumour)
        output = png.as_posix()
    return PatientReport(
        patient=files.rel.as_posix(), status="ok" if qa.passed else "failed QA",
        seconds=time.perf_counter() - start, output=output, qa=qa, rotation_deg=result.rotation_deg,
        translation_mm=result.translation_mm, rigid_ok=result.rigid_ok, bspline_ok=result.bspline_ok,
        notes=result.notes)


def write_qa(path: Path, data_dir: Path, reports: list[PatientReport], settings: RegistrationSettings,
             thresholds: QAThresholds) -> Path:
    """registration_qa.json: the settings, thresholds, one entry a patient, and the counts."""
    count = {s: sum(r.status == s for r in reports) for s in ("ok", "failed QA", "error")}
    doc = {
        "data_dir": str(Path(data_dir).resolve()),
        "simpleitk": sitk.Version_VersionString(),
        "settings": asdict(settings),
        "thresholds": asdict(thresholds),
        "summary": {"patients": len(reports), **count},
        "patients": [r.as_dict() for r in reports],
    }
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return path
