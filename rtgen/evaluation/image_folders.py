"""Score a folder of synthetic MR volumes against the MR of registered reference pairs.

`OUT/<patient>.nii.gz` (what `rtgen predict` writes for an image model) is compared with the MR of
`REF/<patient>/` on the MR's grid, by the DiffMa scoring protocol: each volume normalised to 0-255
by its own 0.5 and 99.5 percentiles, SSIM the mean 2D SSIM over axial slices, PSNR from the volume
MSE, and the same inside the body mask (`rtgen.imaging`, through the validation's `score_volume`). A
missing or bad prediction is reported for its patient and the others are scored.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from rtgen.core.atomic import atomic_write_text, staged_dir
from rtgen.core.errors import DataError, OutputError, RtgenError
from rtgen.data.sources.image_pairs import (
    MR_NAMES,
    ImagePair,
    find_pairs,
    load_mr_reference,
    load_pair,
    read_volume,
    scored_on_mr_alone,
)
from rtgen.tasks.image_base import score_volume

METRICS = ("ssim", "psnr", "mse", "ssim_body", "psnr_body", "mse_body")


@dataclass
class ImageEvaluation:
    per_patient: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        if not self.per_patient:
            return "ImageEvaluation(no patient scored)"
        s = self.summary()
        failed = f", {len(self.failures)} failed" if self.failures else ""
        return f"ImageEvaluation({s['n_patients']} patient(s){failed}: SSIM {s['ssim']:.2f} %, PSNR {s['psnr']:.2f} dB)"

    def __str__(self) -> str:
        """The summary as metrics.json holds it."""
        return json.dumps(self.summary(), indent=2) if self.per_patient else repr(self)

    def summary(self) -> dict:
        rows = list(self.per_patient.values())
        s = {"n_patients": len(rows), **{k: float(np.mean([r[k] for r in rows])) for k in METRICS}}
        if self.failures:
            s["failed_patients"] = self.failures
        return s


def has_mr_references(ref_dir: str | Path) -> bool:
    """Whether `ref_dir` holds CT/MR pairs (then `rtgen evaluate` scores images, not doses)."""
    try:
        pairs = find_pairs(ref_dir)
    except RtgenError:
        return False
    return any((p / n).is_file() for p in pairs for n in MR_NAMES)


def read_reference(folder: str | Path) -> ImagePair:
    """The MR a synthetic MR of this patient folder is scored against, on the grid `rtgen predict`
    writes it on: a registered pair's (the CT's grid), or the MR alone on its own grid for a raw pair
    (`rtgen predict` registered it and wrote on the MR's grid) or an MR without its CT."""
    return load_mr_reference(folder) if scored_on_mr_alone(folder) else load_pair(folder)


def score_image(result: ImageEvaluation, ref: ImagePair, pred: np.ndarray, source: str | Path | None = None) -> dict:
    """Score one synthetic MR (any scale; `rtgen predict` writes [0, 1]) against the reference pair's MR,
    as validation scores it, and add the scores to `result` under the pair's id."""
    if ref.mr is None:
        raise DataError(source or ref.id, f"the reference of {ref.id} holds no MR to score against")
    if np.shape(pred) != ref.mr.shape:
        raise DataError(source or ref.id, f"has shape {np.shape(pred)}; the reference MR of {ref.id} has {ref.mr.shape}")
    result.per_patient[ref.id] = score_volume(np.asarray(pred, np.float32), ref)
    return result.per_patient[ref.id]


def evaluate_image_folders(pred_dir: str | Path, ref_dir: str | Path, out_dir: str | Path | None = None,
                           progress: bool = True,
                           on_failure: Callable[[str, RtgenError], None] | None = None) -> ImageEvaluation:
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(pred_dir, "prediction folder not found" if not pred_dir.exists() else "is not a folder")
    result = ImageEvaluation()

    def failed(pid: str, e: RtgenError) -> None:
        if on_failure is None or isinstance(e, OutputError):
            raise e
        result.failures[pid] = str(e)
        on_failure(pid, e)

    for folder in tqdm(find_pairs(ref_dir), desc="evaluating", unit="patient", disable=not progress):
        pid = folder.name
        try:
            path = next((pred_dir / f"{pid}{ext}" for ext in (".nii.gz", ".nii") if (pred_dir / f"{pid}{ext}").is_file()),
                        None)
            if path is None:
                raise DataError(pred_dir, f"no prediction for patient {pid} (expected {pid}.nii.gz)")
            ref = read_reference(folder)
            pred, _, _ = read_volume(path)
            score_image(result, ref, pred, path)
        except RtgenError as e:
            failed(pid, e)
    if not result.per_patient:
        raise DataError(pred_dir, f"no patient could be evaluated ({len(result.failures)} failed)")
    if out_dir is not None:
        with staged_dir(out_dir) as stage:
            atomic_write_text(stage / "metrics.json", json.dumps(result.summary(), indent=2) + "\n")
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(["patient", *METRICS])
            for pid, r in result.per_patient.items():
                w.writerow([pid, *(f"{r[k]:.6g}" for k in METRICS)])
            atomic_write_text(stage / "per_patient.csv", buf.getvalue())
    return result
