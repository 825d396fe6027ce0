"""The numbers of a dose report (`rtgen report`): per patient, the OpenKBP dose and DVH scores,
Dmean/D95/D99/D1 (and D0.1cc for OARs) per structure, HI (ICRU 83) and Paddick CI at the
prescription isodose per PTV (as `rtgen inspect` reports them), and the 3 %/3 mm gamma pass rate
when asked; each compared quantity marked when it fails a review criterion.

A value fails (CSS class ``fail``, red) when it breaks one of these deliberately simple criteria,
meant to point the eye, not to replace a clinical protocol (`CRITERIA` below, shown on the page):
PTV D95, D99 or D1 differs from the reference by more than 3 % of that PTV's prescription; an OAR's
Dmean or D0.1cc by more than 3 Gy; HI by more than 0.05; Paddick CI by more than 0.10; gamma pass
rate below 90 %. A patient without a reference dose gets the prediction's values only: no score,
nothing fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rtgen.core.structures import OARS, PRESCRIPTION_GY, STRUCTURES, TARGETS
from rtgen.data.records import Patient
from rtgen.dosimetry import (
    OpenKBPScores,
    dose_at_volume_cc,
    dose_at_volume_percent,
    gamma_pass_rate,
    homogeneity_index,
    paddick_conformity_index,
)

# ---------------------------------------------------------------- criteria (documented on the page)

PTV_TOLERANCE_FRACTION = 0.03  # of the PTV's prescription, for D95, D99 and D1
OAR_TOLERANCE_GY = 3.0  # for Dmean and D0.1cc
HI_TOLERANCE = 0.05
CI_TOLERANCE = 0.10
GAMMA_MIN_PERCENT = 90.0
CRITERIA = (
    f"PTV D95, D99, D1: |predicted - reference| > {PTV_TOLERANCE_FRACTION:.0%} of the PTV's prescription",
    f"OAR Dmean, D0.1cc: |predicted - reference| > {OAR_TOLERANCE_GY:g} Gy",
    f"HI (ICRU 83): |predicted - reference| > {HI_TOLERANCE:g}",
    f"Paddick CI at the prescription isodose: |predicted - reference| > {CI_TOLERANCE:.2f}",
    f"gamma pass rate (3 %/3 mm global, 10 % cutoff) < {GAMMA_MIN_PERCENT:g} %",
)

TABLE_METRICS = ("mean", "D_95", "D_99", "D_1", "D_0.1_cc")
METRIC_LABELS = {"mean": "Dmean", "D_95": "D95", "D_99": "D99", "D_1": "D1", "D_0.1_cc": "D0.1cc"}


@dataclass
class Check:
    """One compared quantity: reference, prediction, and whether the difference fails a criterion.

    `reference` is None for a patient without a reference dose (nothing to compare, nothing fails)."""

    reference: float | None
    prediction: float
    fails: bool = False

    @property
    def delta(self) -> float:
        return float("nan") if self.reference is None else self.prediction - self.reference


@dataclass
class PatientReport:
    """Everything the page says about one patient (numbers only; the figures are rendered apart)."""

    patient_id: str
    prescription_gy: float
    dose_score: float | None  # None: the patient has no reference dose
    dvh_score: float | None
    volumes_cc: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, dict[str, Check]] = field(default_factory=dict)  # structure -> metric -> check
    indices: dict[str, Check] = field(default_factory=dict)  # "HI PTV70", "CI PTV70"
    gamma: float | None = None
    dvh_estimate: bool = False  # the prediction came with a DVH estimate (bands)
    wide: list[str] = field(default_factory=list)  # structures with a wide band in it

    @property
    def has_reference(self) -> bool:
        return self.dose_score is not None

    @property
    def gamma_fails(self) -> bool:
        return self.gamma is not None and not (self.gamma >= GAMMA_MIN_PERCENT)

    def failures(self) -> list[str]:
        """Human-readable names of the failing quantities, in table order."""
        out = [f"{s} {METRIC_LABELS[m]}" for s, ms in self.metrics.items() for m, c in ms.items() if c.fails]
        out += [name for name, c in self.indices.items() if c.fails]
        if self.gamma_fails:
            out.append("gamma")
        return out


def prescription_gy(patient: Patient) -> float:
    """The highest PTV prescription the patient has (70 Gy when it has no PTV)."""
    present = [PRESCRIPTION_GY[t] for t in TARGETS if t in patient.structures and patient.structures[t].any()]
    return max(present) if present else PRESCRIPTION_GY["PTV70"]


def _metric_value(dose: np.ndarray, metric: str, voxel_volume_mm3: float) -> float:
    """One TABLE_METRICS value of the dose inside a structure (`dose` holds that structure's voxels)."""
    if metric == "D_0.1_cc":
        return dose_at_volume_cc(dose, 0.1, voxel_volume_mm3)
    if metric == "mean":
        return float(dose.mean())
    return dose_at_volume_percent(dose, float(metric[2:]))


def patient_numbers(patient: Patient, prediction: np.ndarray, scores: OpenKBPScores,
                    gamma: bool = False) -> PatientReport:
    """Scores, per-structure metrics, HI, CI (and gamma) of one patient; adds it to `scores`.

    A patient without a reference dose gets the prediction's values only: no score, no gamma,
    nothing fails, and `scores` is left as it is."""
    ref = None if patient.dose is None else np.asarray(patient.dose, np.float64)
    pred = np.asarray(prediction, np.float64)
    if ref is None:
        rep = PatientReport(patient.id, prescription_gy(patient), None, None)
    else:
        s = scores.add(patient.id, ref, pred, patient.possible_dose_mask, patient.structures,
                       patient.voxel_volume_mm3)
        errors = list(s.dvh_errors.values())
        rep = PatientReport(patient.id, prescription_gy(patient), s.dose_error,
                            float(np.mean(errors)) if errors else float("nan"))
    for name in STRUCTURES:
        mask = patient.structures.get(name)
        if mask is None or not mask.any():
            continue
        rep.volumes_cc[name] = patient.volume_cc(name)
        p = pred[mask]
        r = None if ref is None else ref[mask]
        row: dict[str, Check] = {}
        for metric in TABLE_METRICS:
            if metric == "D_0.1_cc" and name not in OARS:
                continue
            pv = _metric_value(p, metric, patient.voxel_volume_mm3)
            if r is None:
                row[metric] = Check(None, pv)
                continue
            rv = _metric_value(r, metric, patient.voxel_volume_mm3)
            if name in TARGETS:
                fails = metric != "mean" and abs(pv - rv) > PTV_TOLERANCE_FRACTION * PRESCRIPTION_GY[name]
            else:
                fails = metric in ("mean", "D_0.1_cc") and abs(pv - rv) > OAR_TOLERANCE_GY
            row[metric] = Check(rv, pv, bool(fails))
        rep.metrics[name] = row
        if name in TARGETS:
            iso = PRESCRIPTION_GY[name]
            hi_p, ci_p = homogeneity_index(pred, mask), paddick_conformity_index(pred, mask, iso)
            if ref is None:
                rep.indices[f"HI {name}"], rep.indices[f"CI {name}"] = Check(None, hi_p), Check(None, ci_p)
                continue
            hi_r, ci_r = homogeneity_index(ref, mask), paddick_conformity_index(ref, mask, iso)
            rep.indices[f"HI {name}"] = Check(hi_r, hi_p, not abs(hi_p - hi_r) <= HI_TOLERANCE)
            rep.indices[f"CI {name}"] = Check(ci_r, ci_p, not abs(ci_p - ci_r) <= CI_TOLERANCE)
    if gamma and ref is not None:
        rep.gamma = gamma_pass_rate(ref, pred, patient.spacing)
    return rep

