"""Evaluate a folder of predicted doses against reference patients (`rtgen evaluate`)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from rtgen.core.atomic import atomic_write_text, staged_dir
from rtgen.core.errors import DataError, OutputError, RtgenError
from rtgen.core.structures import STRUCTURES, TARGETS
from rtgen.data.sources import PatientSplit
from rtgen.data.sources.nifti import read_nifti
from rtgen.data.sources.openkbp import find_csv, read_dose_csv
from rtgen.dosimetry import OpenKBPScores, gamma_pass_rate, homogeneity_index
from rtgen.dosimetry.bands import read_dvh_estimate
from rtgen.dosimetry.gdp_hmm import GDP_HMM_THRESHOLD_GY, gdp_hmm_mae
from rtgen.evaluation.plots import plot_dvh

if TYPE_CHECKING:
    from rtgen.data.records import Patient
    from rtgen.dosimetry.criteria import CriteriaSet
    from rtgen.dosimetry.scorecard import Scorecard


def find_prediction(pred_dir: Path, patient_id: str) -> Path | None:
    """A prediction may be pt_N.csv(.gz), pt_N.nii(.gz) or pt_N/dose.csv(.gz); two of them for one
    patient is refused rather than guessed between."""
    names = (f"{patient_id}.csv", f"{patient_id}.csv.gz", f"{patient_id}.nii.gz", f"{patient_id}.nii",
             f"{patient_id}_RTDOSE.dcm")  # the last as `rtgen predict --format dicom` writes it
    found = [pred_dir / n for n in names if (pred_dir / n).exists()]
    sub = pred_dir / patient_id
    if sub.is_dir() and (csv := find_csv(sub, "dose")) is not None:
        found.append(csv)
    if len(found) > 1:
        raise DataError(pred_dir, f"holds {' and '.join(p.name for p in found)}: two predictions for "
                                  f"{patient_id}; keep one")
    return found[0] if found else None


def read_prediction(path: Path, grid: tuple[int, ...] | None = None, reference: Path | None = None,
                    mask: np.ndarray | None = None) -> np.ndarray:
    """A predicted dose in Gy, checked like any dose (finite, 0 to 200 Gy); `grid` is the reference
    patient's, which the prediction must match. An RTDOSE (rtgen's DICOM predictions are on a dose
    grid around the body) is resampled onto the CT of `reference`, the reference patient's folder,
    when that is a DICOM folder, and set to 0 outside `mask` (the reference's possible dose mask)
    when given: a dose grid holds dose just outside the skin, where rtgen's predictions are 0."""
    if path.name.endswith(".dcm"):
        from rtgen.data.sources.dicom import (
            is_dicom_dir,
            read_rtdose,
            read_rtdose_on_grid,
        )

        if grid is None:
            return read_rtdose(path).values
        ct = reference if reference is not None and is_dicom_dir(reference) else None
        dose = read_rtdose_on_grid(path, grid, ct)
        return dose if mask is None else np.where(mask, dose, 0).astype(np.float32)
    if path.name.endswith((".nii", ".nii.gz")):
        dose, _ = read_nifti(path, "dose")
        if grid is not None and dose.shape != tuple(grid):
            raise DataError(path, f"shape {dose.shape}, expected the reference grid {tuple(grid)}")
        return dose.astype(np.float32)
    dose = read_dose_csv(path)
    if grid is not None and dose.shape != tuple(grid):
        raise DataError(path, f"CSV predictions are on the OpenKBP grid {dose.shape}; the reference grid is {tuple(grid)}")
    return dose


@dataclass
class EvaluationResult:
    scores: OpenKBPScores
    hi: dict[str, dict[str, float]] = field(default_factory=dict)  # patient -> {"PTV70_ref": .., "PTV70_pred": ..}
    gamma: dict[str, float] = field(default_factory=dict)
    uncertainty_corr: dict[str, float] = field(default_factory=dict)  # Pearson r(std, |error|) in the mask
    uncertainty_rank_corr: dict[str, float] = field(default_factory=dict)  # Spearman rho(std, |error|) in the mask
    # the masked voxels' (std, |error|) of every patient with a spread, pooled for the deciles (float32: 8 bytes a voxel)
    uncertainty_voxels: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list, repr=False)
    # patient -> (row of its `<id>_dvh.csv`, the reference's value of that row) for every banded row
    bands: dict[str, list[tuple[dict, float | None]]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # patient -> why it could not be evaluated
    # with a scorecard (`rtgen evaluate --scorecard`): patient -> ScorecardResult of the prediction and of the
    # reference plan, and the GDP-HMM MAE (body mask = the OpenKBP possible dose mask, 5 Gy threshold)
    scorecard: dict = field(default_factory=dict)
    scorecard_ref: dict = field(default_factory=dict)
    gdp_hmm_mae: dict[str, float] = field(default_factory=dict)
    # with clinical criteria (`rtgen evaluate --criteria`): patient -> CriteriaResult of the prediction and of
    # the reference plan
    criteria: dict = field(default_factory=dict)
    criteria_ref: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        if not self.scores.patients:
            return "EvaluationResult(no patient scored)"
        failed = f", {len(self.failures)} failed" if self.failures else ""
        return (f"EvaluationResult({len(self.scores.patients)} patient(s){failed}: dose score "
                f"{self.scores.dose_score:.3f} Gy, DVH score {self.scores.dvh_score:.3f} Gy)")

    def __str__(self) -> str:
        """The summary as metrics.json holds it."""
        return json.dumps(self.summary(), indent=2) if self.scores.patients else repr(self)

    def hi_errors(self) -> dict[str, float]:
        out = {}
        for t in TARGETS:
            errs = [abs(v[f"{t}_ref"] - v[f"{t}_pred"]) for v in self.hi.values() if f"{t}_ref" in v]
            if errs:
                out[t] = float(np.mean(errs))
        return out

    def summary(self) -> dict:
        s = {
            "n_patients": len(self.scores.patients),
            "dose_score": self.scores.dose_score,
            "dvh_score": self.scores.dvh_score,
            "dvh_metric_errors": self.scores.metric_errors(),
            "hi_abs_error": self.hi_errors(),
        }
        if self.gamma:
            s["gamma_pass_rate_mean"] = float(np.mean(list(self.gamma.values())))
        if self.uncertainty_corr:
            s["uncertainty_error_correlation_mean"] = float(np.nanmean(list(self.uncertainty_corr.values())))
            s["uncertainty_error_correlation"] = self.uncertainty_corr
        if self.uncertainty_rank_corr:
            s["uncertainty_error_rank_correlation_mean"] = float(np.nanmean(list(self.uncertainty_rank_corr.values())))
            s["uncertainty_error_rank_correlation"] = self.uncertainty_rank_corr
        if self.uncertainty_voxels:
            s["error_by_uncertainty_decile"] = self.error_by_uncertainty_decile()
        if self.bands:
            s["dvh_bands"] = self.band_summary()
        if self.gdp_hmm_mae:
            s["gdp_hmm_mae"] = float(np.mean(list(self.gdp_hmm_mae.values())))
            s["gdp_hmm_mae_definition"] = (f"mean |ref - pred| over the possible dose mask (as body mask) where ref or "
                                           f"pred > {GDP_HMM_THRESHOLD_GY:g} Gy")
        if self.scorecard:
            s["scorecard"] = self.scorecard_summary()
        if self.criteria:
            s["criteria"] = self.criteria_summary()
        if self.failures:
            s["failed_patients"] = self.failures
        return s

    def error_by_uncertainty_decile(self) -> dict:
        """Mean |error| (Gy) by decile of predicted std, over the masked voxels of every patient with a spread."""
        std = np.concatenate([s for s, _ in self.uncertainty_voxels])
        err = np.concatenate([e for _, e in self.uncertainty_voxels])
        return error_by_decile(std, err)

    def band_levels(self) -> tuple[float, ...]:
        """The band levels (0.8, 0.95, ...) that the DVH estimates give, from their columns."""
        return band_levels(row for pairs in self.bands.values() for row, _ in pairs)

    def band_summary(self) -> dict:
        """Coverage and mean width of the DVH estimate bands: pooled over every row of every patient, per
        structure, and per patient; per level (\"80\", \"95\"), each pooled, in Gy rows (DVH metrics)
        and in % rows (curve points) apart, as `rtgen.dosimetry.bands.coverage` counts them."""
        from rtgen.dosimetry.bands import coverage

        levels = self.band_levels()
        pairs = [pair for ps in self.bands.values() for pair in ps]
        structures = sorted({row["structure"] for row, _ in pairs}, key=_structure_order)
        return {
            "patients": len(self.bands),
            "definition": ("coverage: share of reference values inside their band; mean width: upper - lower; "
                           "_gy: DVH metrics (Gy), _pct: DVH curve points (% of the structure's volume)"),
            "levels": coverage(pairs, levels),
            "per_structure": {s: coverage([p for p in pairs if p[0]["structure"] == s], levels) for s in structures},
            "per_patient": {pid: {k: v["coverage"] for k, v in coverage(ps, levels).items()}
                            for pid, ps in self.bands.items()},
        }

    def scorecard_summary(self) -> dict:
        per = {}
        for pid, r in self.scorecard.items():
            ref = self.scorecard_ref.get(pid)
            row = {k: v for k, v in r.to_dict().items() if k != "template"}  # the template is named once, below
            per[pid] = {**row, **({"reference_total": ref.total, "reference_fraction": ref.fraction} if ref else {})}
        first = next(iter(self.scorecard.values()))
        return {"template": first.template,
                "total_mean": float(np.mean([r.total for r in self.scorecard.values()])),
                "fraction_mean": float(np.mean([r.fraction for r in self.scorecard.values()])),
                **({"reference_fraction_mean": float(np.mean([r.fraction for r in self.scorecard_ref.values()]))}
                   if self.scorecard_ref else {}),
                "per_patient": per}

    def criteria_summary(self) -> dict:
        """The share of clinical criteria met, pooled over patients (met / applicable patient-criterion
        pairs), by the dose scored and by the reference plan, per criterion and per patient."""
        from rtgen.dosimetry.criteria import pooled_share

        first = next(iter(self.criteria.values()))
        per_criterion = {}
        for i, row in enumerate(first.rows):
            out = {}
            for key, results in (("share_met", self.criteria), ("reference_share_met", self.criteria_ref)):
                met = [r.rows[i].met for r in results.values() if r.rows[i].met is not None]
                out[key] = float(np.mean(met)) if met else None
            out["applicable"] = sum(r.rows[i].met is not None for r in self.criteria.values())
            per_criterion[row.label] = out
        return {"set": first.name,
                "share_met": pooled_share(self.criteria.values()),
                "reference_share_met": pooled_share(self.criteria_ref.values()) if self.criteria_ref else None,
                "definition": "criteria met / criteria applicable (structure present), pooled over patients",
                "per_criterion": per_criterion,
                "per_patient": {pid: {**r.to_dict(), **({"reference": self.criteria_ref[pid].to_dict()}
                                                        if pid in self.criteria_ref else {})}
                                for pid, r in self.criteria.items()}}


def homogeneity_by_target(ref, pred: np.ndarray) -> dict[str, float]:
    """ICRU 83 HI of the reference and predicted dose for every PTV the patient has: {"PTV70_ref": ..}."""
    return {
        f"{t}_{which}": homogeneity_index(dose, ref.structures[t])
        for t in TARGETS
        if t in ref.structures and ref.structures[t].any()
        for which, dose in (("ref", ref.dose), ("pred", pred))
    }


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    out_dir: str | Path | None = None,
    gamma: bool = False,
    figures: bool = True,
    progress: bool = True,
    on_failure: Callable[[str, RtgenError], None] | None = None,
    scorecard: Scorecard | None = None,
    criteria: CriteriaSet | None = None,
) -> EvaluationResult:
    """Score every reference patient's prediction; write outputs to `out_dir` atomically.

    Without `on_failure` the first bad patient raises. With it, a patient whose reference or
    prediction is missing or bad is passed to `on_failure(patient, error)`, listed in
    `result.failures` and `metrics.json`, and the others are scored; if none could be, it raises.

    With `scorecard` (an `rtgen.dosimetry.scorecard.Scorecard`) each prediction and reference plan is
    also scored on it, and the GDP-HMM MAE is computed with the OpenKBP possible dose mask as the
    body mask; both go to metrics.json and per_patient.csv.

    With `criteria` (an `rtgen.dosimetry.criteria.CriteriaSet`) each prediction and reference plan is
    judged on the clinical criteria: the share met goes to metrics.json and per_patient.csv, and every
    patient's value and verdict per criterion to criteria.csv."""
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    if not pred_dir.is_dir():
        raise DataError(pred_dir, "prediction folder not found" if not pred_dir.exists() else "is not a folder")
    refs = PatientSplit(ref_dir, load_ct=False, progress=False)
    result = EvaluationResult(OpenKBPScores())

    def failed(pid: str, e: RtgenError) -> None:
        if on_failure is None or isinstance(e, OutputError):
            raise e
        result.failures[pid] = str(e)
        on_failure(pid, e)

    todo = []
    for i, pid in enumerate(refs.ids):  # missing predictions are found before any scoring
        try:
            path = find_prediction(pred_dir, pid)
        except RtgenError as e:
            failed(pid, e)
            continue
        if path is None:
            failed(pid, DataError(pred_dir, f"no prediction for patient {pid} (expected {pid}.csv or {pid}.nii.gz)"))
        else:
            todo.append((i, pid, path))
    with staged_dir(out_dir) if out_dir is not None else contextlib.nullcontext() as stage:
        for i, pid, path in tqdm(todo, desc="evaluating", unit="patient", disable=not progress):
            try:
                _evaluate_one(refs, i, pid, path, pred_dir, result, gamma, stage if figures else None, scorecard,
                              criteria)
            except RtgenError as e:
                failed(pid, e)
        if not result.scores.patients:
            raise DataError(pred_dir, f"no patient could be evaluated ({len(result.failures)} failed)")
        if stage is not None:
            atomic_write_text(stage / "metrics.json", json.dumps(result.summary(), indent=2) + "\n")
            atomic_write_text(stage / "per_patient.csv", per_patient_csv(result))
            if result.criteria:
                atomic_write_text(stage / "criteria.csv", criteria_csv(result))
    return result


def _evaluate_one(refs: PatientSplit, i: int, pid: str, path: Path, pred_dir: Path, result: EvaluationResult,
                  gamma: bool, figure_dir: Path | None, scorecard: Scorecard | None = None,
                  criteria: CriteriaSet | None = None) -> None:
    ref = refs[i]
    if ref.dose is None:
        raise DataError(refs.paths[i], "reference patient has no dose (dose.csv or dose.nii.gz)")
    pred = read_prediction(path, ref.grid, refs.paths[i], ref.possible_dose_mask)
    std_path = pred_dir / f"{ref.id}_std.nii.gz"
    std = read_prediction(std_path, ref.grid) if std_path.is_file() else None
    estimate = read_dvh_estimate(pred_dir, ref.id)
    score_patient(result, ref, pred, gamma, scorecard, std, figure_dir, dvh_estimate=estimate, criteria=criteria)


def band_levels(rows) -> tuple[float, ...]:
    """The levels (as fractions, ascending) of the bands that DVH estimate rows give (`lower_<percent>` keys)."""
    found = {k.removeprefix("lower_") for row in rows for k in row if k.startswith("lower_")}
    return tuple(sorted(float(p) / 100.0 for p in found))


def band_pairs(rows: list[dict], reference: Patient, source: str = "DVH estimate") -> list[tuple[dict, float | None]]:
    """(row, the reference dose's value of that row) for every row of a DVH estimate; None where the
    reference patient lacks the structure (such a row is not counted)."""
    from rtgen.dosimetry.bands import metric_value

    pairs = []
    for row in rows:
        mask = reference.structures.get(row["structure"])
        if mask is None or not mask.any():
            pairs.append((row, None))
            continue
        try:
            value = metric_value(reference.dose[mask], row["metric"], reference.voxel_volume_mm3)
        except RtgenError as e:
            raise DataError(source, str(e)) from None
        pairs.append((row, value))
    return pairs


def _structure_order(name: str) -> int:
    return STRUCTURES.index(name) if name in STRUCTURES else len(STRUCTURES)


def score_patient(result: EvaluationResult, ref: Patient, pred: np.ndarray, gamma: bool = False,
                  scorecard: Scorecard | None = None, std: np.ndarray | None = None,
                  figure_dir: Path | None = None, dvh_estimate: list[dict] | None = None,
                  criteria: CriteriaSet | None = None) -> None:
    """Score one prediction (dose in Gy on the reference's grid) against the reference patient's dose
    and add it to `result`: OpenKBP scores, HI, and on request the gamma pass rate, the scorecard of
    the prediction and of the reference plan with the GDP-HMM MAE, the correlation (Pearson and
    Spearman) of a predicted spread `std` with the error and its voxels for the deciles, the coverage
    of a DVH estimate's bands (`dvh_estimate`: rows of `<id>_dvh.csv`), the clinical `criteria` of the
    prediction and of the reference plan, and the DVH figure in `figure_dir`."""
    if ref.dose is None:
        raise DataError(ref.id, "reference patient has no dose (dose.csv or dose.nii.gz)")
    pred = np.asarray(pred)
    if pred.shape != tuple(ref.grid):
        raise DataError(ref.id, f"predicted dose shape {pred.shape} differs from the reference grid {tuple(ref.grid)}")
    if scorecard is not None:  # before any result is stored, so a failure leaves no half-scored patient
        extra = (gdp_hmm_mae(ref.dose, pred, ref.possible_dose_mask),  # OpenKBP's possible dose mask as the body
                 scorecard.evaluate(pred, ref.structures, ref.voxel_volume_mm3),
                 scorecard.evaluate(ref.dose, ref.structures, ref.voxel_volume_mm3))
    pairs = band_pairs(dvh_estimate, ref, ref.id) if dvh_estimate is not None else None
    if std is not None and np.shape(std) != tuple(ref.grid):
        raise DataError(ref.id, f"predicted std shape {np.shape(std)} differs from the reference grid {tuple(ref.grid)}")
    if criteria is not None:
        judged = (criteria.evaluate(pred, ref.structures, ref.voxel_volume_mm3),
                  criteria.evaluate(ref.dose, ref.structures, ref.voxel_volume_mm3))
    result.scores.add(ref.id, ref.dose, pred, ref.possible_dose_mask, ref.structures, ref.voxel_volume_mm3)
    result.hi[ref.id] = homogeneity_by_target(ref, pred)
    if gamma:
        result.gamma[ref.id] = gamma_pass_rate(ref.dose, pred, ref.spacing)
    if scorecard is not None:
        result.gdp_hmm_mae[ref.id], result.scorecard[ref.id], result.scorecard_ref[ref.id] = extra
    if criteria is not None:
        result.criteria[ref.id], result.criteria_ref[ref.id] = judged
    if std is not None:
        mask = ref.possible_dose_mask
        result.uncertainty_corr[ref.id] = uncertainty_error_correlation(std, ref.dose, pred, mask)
        s = np.asarray(std, np.float32)[mask]
        e = np.abs(np.asarray(ref.dose, np.float64) - np.asarray(pred, np.float64))[mask].astype(np.float32)
        result.uncertainty_rank_corr[ref.id] = rank_correlation(s, e)
        result.uncertainty_voxels.append((s, e))
    if pairs is not None:
        result.bands[ref.id] = pairs
    if figure_dir is not None:
        plot_dvh(figure_dir / f"dvh_{ref.id}.png", ref.structures, ref.dose, pred, title=f"{ref.id}: reference vs prediction")


def uncertainty_error_correlation(std: np.ndarray, reference: np.ndarray, prediction: np.ndarray,
                                  mask: np.ndarray) -> float:
    """Pearson correlation, inside the possible dose mask, of predicted spread and absolute error."""
    s = np.asarray(std, np.float64)[mask]
    e = np.abs(np.asarray(reference, np.float64) - np.asarray(prediction, np.float64))[mask]
    if s.size < 2 or s.std() == 0 or e.std() == 0:
        return float("nan")
    return float(np.corrcoef(s, e)[0, 1])


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (ties get their mean rank); nan when either is constant."""
    from scipy.stats import rankdata

    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.size < 2:
        return float("nan")
    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def error_by_decile(std: np.ndarray, error: np.ndarray, groups: int = 10) -> dict:
    """Voxels ordered by predicted std (ties in voxel order) and cut into `groups` groups of equal count
    (sizes differ by at most one): each group's mean |error| (Gy), and the edges, the std at each cut
    and the largest std (groups + 1 numbers, Gy)."""
    std, error = np.asarray(std).ravel(), np.asarray(error, np.float64).ravel()
    if std.size < groups:
        return {"mean_abs_error_gy": [], "std_edges_gy": [], "voxels": int(std.size)}
    order = np.argsort(std, kind="stable")
    parts = np.array_split(order, groups)
    sorted_std = std[order].astype(np.float64)
    starts = np.cumsum([0] + [len(p) for p in parts[:-1]])
    return {"mean_abs_error_gy": [float(error[p].mean()) for p in parts],
            "std_edges_gy": [float(sorted_std[i]) for i in starts] + [float(sorted_std[-1])],
            "voxels": int(std.size)}


def per_patient_csv(result: EvaluationResult) -> str:
    columns = ["patient", "dose_score", "dvh_score"]
    rows = []
    keys = sorted({k for p in result.scores.patients for k in p.dvh_errors}, key=str)
    hi_keys = [f"HI_{t}_{w}" for t in TARGETS for w in ("ref", "pred")]
    columns += [f"abs_err_{m}_{s}" for m, s in keys] + hi_keys + (["gamma_pass_rate"] if result.gamma else [])
    columns += ["uncertainty_error_correlation"] if result.uncertainty_corr else []
    columns += ["uncertainty_error_rank_correlation"] if result.uncertainty_rank_corr else []
    levels = result.band_levels() if result.bands else ()
    band_cov = result.band_summary()["per_patient"] if result.bands else {}
    columns += [f"band_coverage_{p * 100:g}" for p in levels]
    columns += ["gdp_hmm_mae"] if result.gdp_hmm_mae else []
    columns += (["scorecard_total", "scorecard_max", "scorecard_fraction", "scorecard_total_ref", "scorecard_fraction_ref"]
                if result.scorecard else [])
    columns += (["criteria_met", "criteria_applicable", "criteria_share_met", "criteria_met_ref", "criteria_share_met_ref"]
                if result.criteria else [])
    for p in result.scores.patients:
        errs = p.dvh_errors
        row = [p.patient_id, p.dose_error, float(np.mean(list(errs.values()))) if errs else ""]
        row += [errs.get(k, "") for k in keys]
        hi = result.hi.get(p.patient_id, {})
        row += [hi.get(k[3:], "") for k in hi_keys]
        if result.gamma:
            row.append(result.gamma[p.patient_id])
        if result.uncertainty_corr:
            row.append(result.uncertainty_corr.get(p.patient_id, ""))
        if result.uncertainty_rank_corr:
            row.append(result.uncertainty_rank_corr.get(p.patient_id, ""))
        cov = band_cov.get(p.patient_id, {})
        row += [cov.get(f"{q * 100:g}", "") for q in levels]
        if result.gdp_hmm_mae:
            row.append(result.gdp_hmm_mae.get(p.patient_id, ""))
        if result.scorecard:
            sc, ref = result.scorecard.get(p.patient_id), result.scorecard_ref.get(p.patient_id)
            row += [sc.total, sc.max_total, sc.fraction] if sc else ["", "", ""]
            row += [ref.total, ref.fraction] if ref else ["", ""]
        if result.criteria:
            cr, ref = result.criteria.get(p.patient_id), result.criteria_ref.get(p.patient_id)
            row += [cr.n_met, cr.n_applicable, cr.share_met] if cr else ["", "", ""]
            row += [ref.n_met, ref.share_met] if ref else ["", ""]
        rows.append(row)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue()


def criteria_csv(result: EvaluationResult) -> str:
    """One row per patient and criterion: the value and verdict of the dose scored and of the reference
    plan (value empty and met "n/a" where the structure is absent)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["patient", "criterion", "limit_gy", "value_gy", "met", "value_gy_ref", "met_ref"])
    verdict = lambda m: "n/a" if m is None else ("yes" if m else "no")
    for pid, r in result.criteria.items():
        ref = result.criteria_ref.get(pid)
        for i, row in enumerate(r.rows):
            rr = ref.rows[i] if ref is not None else None
            writer.writerow([pid, row.label, f"{row.limit_gy:g}", "" if row.value is None else f"{row.value:.4f}",
                             verdict(row.met), "" if rr is None or rr.value is None else f"{rr.value:.4f}",
                             "" if rr is None else verdict(rr.met)])
    return buf.getvalue()
