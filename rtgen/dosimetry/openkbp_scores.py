"""The OpenKBP challenge scores, computed exactly as the official evaluation does.

Dose score: per patient sum|ref - pred| over the whole grid / voxels in the possible dose
mask, then the mean over patients. DVH score: |ref - pred| of every DVH metric that exists
(always on the reference's masks), pooled over patients, metrics and structures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rtgen.core.structures import OARS, TARGETS
from rtgen.dosimetry.checks import require_dose
from rtgen.dosimetry.dvh import dose_at_volume_cc, dose_at_volume_percent

OAR_METRICS = ("D_0.1_cc", "mean")
TARGET_METRICS = ("D_99", "D_95", "D_1")
METRIC_COLUMNS = tuple((m, s) for s in OARS for m in OAR_METRICS) + tuple(
    (m, s) for s in TARGETS for m in TARGET_METRICS
)


def dose_score(reference: np.ndarray, prediction: np.ndarray, possible_dose_mask: np.ndarray) -> float:
    ref = require_dose(reference, "reference dose")
    pred = require_dose(prediction, "predicted dose")
    if ref.shape != pred.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match reference {ref.shape}")
    n = np.count_nonzero(possible_dose_mask)
    if n == 0:
        raise ValueError("possible dose mask is empty")
    return float(np.sum(np.abs(ref - pred)) / n)


def dvh_metrics(dose: np.ndarray, structures: dict[str, np.ndarray], voxel_volume_mm3: float) -> dict:
    """{(metric, structure): value} for the structures present (non-empty masks)."""
    out = {}
    dose = require_dose(dose)
    for metric, name in METRIC_COLUMNS:
        mask = structures.get(name)
        if mask is None or not mask.any():
            continue
        values = dose[mask]
        if metric == "D_0.1_cc":
            out[(metric, name)] = dose_at_volume_cc(values, 0.1, voxel_volume_mm3)
        elif metric == "mean":
            out[(metric, name)] = float(values.mean())
        else:
            out[(metric, name)] = dose_at_volume_percent(values, float(metric[2:]))
    return out


@dataclass
class PatientScore:
    patient_id: str
    dose_error: float
    reference: dict
    prediction: dict

    @property
    def dvh_errors(self) -> dict:
        return {k: abs(self.reference[k] - self.prediction[k]) for k in self.reference}


@dataclass
class OpenKBPScores:
    """Accumulates patients; `dose_score` and `dvh_score` give the challenge numbers."""

    patients: list[PatientScore] = field(default_factory=list)

    def add(self, patient_id, reference, prediction, possible_dose_mask, structures, voxel_volume_mm3) -> PatientScore:
        score = PatientScore(
            patient_id,
            dose_score(reference, prediction, possible_dose_mask),
            dvh_metrics(reference, structures, voxel_volume_mm3),
            dvh_metrics(prediction, structures, voxel_volume_mm3),
        )
        self.patients.append(score)
        return score

    @property
    def dose_score(self) -> float:
        return float(np.mean([p.dose_error for p in self.patients]))

    @property
    def dvh_score(self) -> float:
        pooled = [e for p in self.patients for e in p.dvh_errors.values()]
        return float(np.mean(pooled)) if pooled else float("nan")

    def metric_errors(self) -> dict[str, float]:
        """Mean absolute error per metric kind (D_0.1_cc, mean, D_99, D_95, D_1), pooled over structures."""
        by_metric: dict[str, list[float]] = {}
        for p in self.patients:
            for (metric, _), e in p.dvh_errors.items():
                by_metric.setdefault(metric, []).append(e)
        return {m: float(np.mean(v)) for m, v in by_metric.items()}
