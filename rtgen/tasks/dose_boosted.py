"""Dose prediction voxel by voxel with gradient-boosted trees: the model a 2-core CPU trains in minutes.

The task draws training voxels inside each patient's possible dose mask (more near PTV surfaces and
in OARs), describes each by the features of `rtgen.data.transforms.voxel_features`, fits the
LightGBM model in one call (`fit`, run by `rtgen.engine.direct`), and judges it as every dose model
is judged: whole validation volumes, OpenKBP dose and DVH scores. A prediction is the model on
every voxel of the possible dose mask, clamped at 0 Gy, zero outside.

With `calibration.folds` = k >= 2, training also fits a DVH calibration
(`rtgen.dosimetry.calibration`): k boosters, each on the other folds of the training patients,
predict the patients they did not see, and a ridge regression learns how each structure's DVH
metrics err from that structure's own predicted dose. Every prediction is then reshaped inside
its PTVs and OARs by that regression, and (`calibration.ensemble`) the k fold boosters predict
with the main one. It costs one more pass of features over the training patients and k smaller
fits; on OpenKBP validation it took the DVH score from 2.15 to 1.95 Gy and the dose score from
3.15 to 3.10 Gy (docs/reports/2026-11-26-lightgbm-dose-calibration.md).
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, ClassVar

import numpy as np
from pydantic import Field
from tqdm.auto import tqdm

from rtgen.core.atomic import atomic_write_text
from rtgen.core.errors import ConfigError, RtgenError
from rtgen.core.registry import register_task
from rtgen.data.records import Patient
from rtgen.data.sources import load_patient
from rtgen.data.transforms.voxel_features import (
    VoxelFeatureConfig,
    cached_training_sample,
    feature_matrix,
    feature_names,
)
from rtgen.dosimetry import OpenKBPScores, dvh_metrics
from rtgen.dosimetry.bands import DVHBands, case_coverage, cross_validated_coverage, structure_cases
from rtgen.dosimetry.calibration import DVHCalibration, structure_statistics
from rtgen.tasks.base import Task


@dataclass
class BoostedDataConfig:
    train: str = ""  # split folder of labelled patients (any layout rtgen reads)
    val: str = ""
    max_train_patients: Annotated[int, Field(ge=1)] | None = None
    max_val_patients: Annotated[int, Field(ge=1)] | None = None
    val_samples_per_patient: Annotated[int, Field(ge=100, le=2_000_000)] = 5000  # for early stopping
    cache: str = ""  # folder for per-patient training samples; "" keeps nothing between runs
    feature_workers: Annotated[int, Field(ge=1, le=256)] = 2  # processes computing features
    refit: bool = False  # also fit on the val patients (a recipe already fixed): no early stopping, k-fold scores


@dataclass
class CalibrationConfig:
    folds: Annotated[int, Field(ge=0, le=20)] = 3  # out-of-fold boosters that fit the DVH calibration; 0 or 1: none
    ridge: Annotated[float, Field(ge=0, le=1e6)] = 100.0  # on standardised statistics
    min_cases: Annotated[int, Field(ge=1, le=100_000)] = 8  # structures seen in fewer training patients stay as predicted
    ensemble: bool = True  # the fold boosters also predict: the dose is the mean of the k + 1 boosters
    bands: bool = True  # DVH estimate bands calibrated on the out-of-fold predictions (split-conformal)
    band_levels: tuple[Annotated[float, Field(gt=0, lt=1)], ...] = (0.8, 0.95)  # central coverage of each band


def _sample(args):
    path, config, seed, cache = args
    return cached_training_sample(Path(path), config, seed, Path(cache) if cache else None)


def _pdm_features(args):
    path, config = args
    patient = load_patient(path)
    return patient, feature_matrix(patient, config, patient.possible_dose_mask)


@register_task("dose_boosted")
class BoostedDoseTask(Task):
    """Gradient-boosted voxel regression judged by the OpenKBP scores."""

    sections: ClassVar[dict[str, type]] = {"voxels": VoxelFeatureConfig, "data": BoostedDataConfig,
                                           "calibration": CalibrationConfig}
    checkpoint_sections: ClassVar[tuple[str, ...]] = ("voxels", "calibration")
    selection_metric = "dose_score"
    metric_units = "Gy"
    item_name = "voxels"
    fits_directly: ClassVar[bool] = True  # one call to fit, no gradient steps: rtgen.engine.direct runs it
    weights_file: ClassVar[str] = "model.txt"
    stochastic: ClassVar[bool] = False
    voxels: VoxelFeatureConfig
    data: BoostedDataConfig
    calibration: CalibrationConfig
    dvh_calibration: DVHCalibration | None = None  # fitted by `fit`, or read from config.json
    dvh_bands: DVHBands | None = None  # likewise
    ensemble_members: int = 0  # fold boosters saved beside model.txt as model.fold<i>.txt

    def implied_architecture(self) -> dict:
        return {"n_features": len(feature_names(self.voxels))}

    # ---- data
    def _gather(self, paths: list[Path], config: VoxelFeatureConfig, seed: int, desc: str, progress: bool):
        jobs = [(str(p), config, seed + i, self.data.cache) for i, p in enumerate(paths)]
        with ProcessPoolExecutor(self.data.feature_workers) as pool:
            parts = list(tqdm(pool.map(_sample, jobs), total=len(jobs), desc=desc, unit="patient",
                              disable=not progress))
        return parts

    # ---- fitting (rtgen.engine.direct)
    def fit(self, seed: int, progress: bool = True):
        """Draw voxels, fit, and score. Returns (model, metrics, data summary).

        Without `data.refit`: the training patients are fitted, early stopping reads a random subset of
        the validation patients' voxels, and the validation patients' whole volumes give the scores.
        With it, the validation patients are fitted too, with the configured number of trees, and the
        scores are the k-fold cross-validated ones over every patient (`cv_*`)."""
        train = self.split_paths(self.data.train, self.data.max_train_patients, "train")
        val = self.split_paths(self.data.val, self.data.max_val_patients, "val") if self.data.val or not self.data.refit \
            else []
        refit = self.data.refit
        paths = train + val if refit else train
        t0 = time.perf_counter()
        parts = self._gather(paths, self.voxels, seed, "train voxels", progress)
        X, y = np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])
        Xv = yv = None
        cases = []
        if not refit:
            cases = self._whole_volumes(val, progress)
            rng = np.random.default_rng(seed + 10_000)
            picks = [rng.choice(len(Xc), min(len(Xc), self.data.val_samples_per_patient), replace=False)
                     for _, Xc in cases]
            Xv = np.concatenate([Xc[i] for (_, Xc), i in zip(cases, picks)])
            yv = np.concatenate([p.dose[p.possible_dose_mask][i] for (p, _), i in zip(cases, picks)])
        features_s = time.perf_counter() - t0
        model = self.build_model()
        info = model.fit(X, y, Xv, yv, feature_names(self.voxels), progress=progress)
        fit_s = time.perf_counter() - t0 - features_s
        n_voxels = len(y)
        del X, y
        t1 = time.perf_counter()
        self.dvh_calibration, self.dvh_bands, self.ensemble_members = None, None, 0
        cv: dict = {}
        if self.calibration.folds >= 2 and len(paths) >= self.calibration.folds:
            boosters, cv = self._cross_validate(paths, parts, info["trees"], progress)
            if self.calibration.ensemble:
                model.members = boosters
                self.ensemble_members = len(boosters)
        calibration_s = time.perf_counter() - t1
        del parts
        t1 = time.perf_counter()
        if refit:
            metrics = {"dose_score": cv["cv_dose_score"], "dvh_score": cv["cv_dvh_score"], **cv}
        else:
            metrics = {**self._score(model, cases), **cv}
            metrics["predict_seconds_per_patient"] = round((time.perf_counter() - t1) / max(1, len(cases)), 2)
        data = {"train_patients": len(paths), "train_voxels": int(n_voxels), "val_patients": 0 if refit else len(val),
                "val_voxels": 0 if refit else int(len(yv)), "trees": info["trees"], "refit": refit,
                "folds": self.calibration.folds, "feature_seconds": round(features_s, 1),
                "fit_seconds": round(fit_s, 1), "calibration_seconds": round(calibration_s, 1)}
        return model, metrics, data

    def _cross_validate(self, paths: list[Path], parts: list, trees: int, progress: bool) -> tuple[list, dict]:
        """k boosters, each fitted on the other folds (patient i belongs to fold i mod k), predict the
        patients they did not see. From those out-of-fold predictions: the DVH calibration (fitted on
        all of them), the DVH bands, and cross-validated scores, where each patient's prediction is
        calibrated by a calibration fitted on the other folds only. Returns (the k boosters, cv metrics)."""
        k = self.calibration.folds
        fold = np.arange(len(paths)) % k
        settings = replace(self.architecture, n_estimators=max(1, trees), early_stopping_rounds=0)
        rows: list = [None] * len(paths)
        oof: list = [None] * len(paths)
        boosters = []
        bar = tqdm(total=len(paths), desc=f"out-of-fold predictions ({k} folds)", unit="patient",
                   disable=not progress)
        for f in range(k):
            seen = [parts[i] for i in range(len(paths)) if fold[i] != f]
            booster = self.model_entry.build(settings)
            booster.fit(np.concatenate([x for x, _ in seen]), np.concatenate([y for _, y in seen]),
                        feature_names=feature_names(self.voxels))
            del seen
            boosters.append(booster)
            held = [i for i in range(len(paths)) if fold[i] == f]
            with ProcessPoolExecutor(self.data.feature_workers) as pool:
                for i, (patient, X) in zip(held, pool.map(_pdm_features, [(str(paths[i]), self.voxels) for i in held])):
                    if patient.dose is None:
                        raise RtgenError(f"{patient.id}: training patient has no dose")
                    oof[i] = np.clip(booster.predict(X), 0.0, None).astype(np.float32)
                    dose = self._assemble(patient, oof[i])
                    rows[i] = (structure_statistics(dose, patient.structures, patient.voxel_volume_mm3),
                               dvh_metrics(patient.dose, patient.structures, patient.voxel_volume_mm3))
                    bar.update()
        bar.close()
        ridge, min_cases = self.calibration.ridge, self.calibration.min_cases
        self.dvh_calibration = DVHCalibration.fit(rows, ridge, min_cases)
        crossed = {f: DVHCalibration.fit([r for r, g in zip(rows, fold) if g != f], ridge, min_cases) for f in range(k)}
        scores, band_cases = OpenKBPScores(), []
        # each patient is read again (about 0.2 s from a split): the cross-fitted calibrations need every
        # fold's rows first, and keeping 200 whole patients from the first pass would take gigabytes
        for i, path in enumerate(tqdm(paths, desc="cross-validated scores", unit="patient", disable=not progress)):
            patient = load_patient(path)
            dose = self._calibrate(patient, self._assemble(patient, oof[i]), crossed[fold[i]])
            scores.add(patient.id, patient.dose, dose, patient.possible_dose_mask, patient.structures,
                       patient.voxel_volume_mm3)
            if self.calibration.bands:
                for case in structure_cases(dose, patient.structures, patient.voxel_volume_mm3,
                                            reference=patient.dose):
                    case.fold, case.patient = int(fold[i]), patient.id
                    band_cases.append(case)
        metrics = {"cv_folds": k, "cv_patients": len(paths), "cv_dose_score": scores.dose_score,
                   "cv_dvh_score": scores.dvh_score}
        if self.calibration.bands:
            levels = tuple(self.calibration.band_levels)
            self.dvh_bands = DVHBands.fit(band_cases, levels, min_cases=min_cases)
            metrics["cv_band_coverage"] = cross_validated_coverage(band_cases, levels, k, min_cases)
        return boosters, metrics

    def _whole_volumes(self, paths: list[Path], progress: bool) -> list[tuple[Patient, np.ndarray]]:
        jobs = [(str(p), self.voxels) for p in paths]
        with ProcessPoolExecutor(self.data.feature_workers) as pool:
            cases = list(tqdm(pool.map(_pdm_features, jobs), total=len(jobs), desc="validation features",
                              unit="patient", disable=not progress))
        for (patient, _), path in zip(cases, paths):
            if patient.dose is None:
                raise RtgenError(f"{path}: validation patient has no dose")
        return cases

    def _score(self, model, cases) -> dict:
        """The scores of the predictions `rtgen predict` writes; with a DVH calibration, also those of
        the boosters without it (`uncalibrated_*`); with DVH bands, their coverage (`band_coverage`)."""
        scores, raw, band_cases = OpenKBPScores(), OpenKBPScores(), []
        for patient, X in cases:
            dose = self._assemble(patient, model.predict(X))
            args = (patient.possible_dose_mask, patient.structures, patient.voxel_volume_mm3)
            calibrated = self._calibrate(patient, dose)
            scores.add(patient.id, patient.dose, calibrated, *args)
            if self.dvh_calibration is not None:
                raw.add(patient.id, patient.dose, dose, *args)
            if self.dvh_bands is not None:
                band_cases += structure_cases(calibrated, patient.structures, patient.voxel_volume_mm3,
                                              self.dvh_bands.curve_gy, reference=patient.dose)
        metrics = {"dose_score": scores.dose_score, "dvh_score": scores.dvh_score}
        if raw.patients:
            metrics.update(uncalibrated_dose_score=raw.dose_score, uncalibrated_dvh_score=raw.dvh_score)
        if band_cases:
            metrics["band_coverage"] = case_coverage(self.dvh_bands, band_cases)
        return metrics

    def _calibrate(self, patient: Patient, dose: np.ndarray, calibration: DVHCalibration | None = None) -> np.ndarray:
        calibration = calibration or self.dvh_calibration
        if calibration is None:
            return dose
        out = calibration.apply(dose, patient.structures, patient.voxel_volume_mm3)
        # an organ's map applies to all of its voxels, and OpenKBP's structures can reach past the
        # possible dose mask (outside the body): no dose there, as in the reference plans
        out[~patient.possible_dose_mask] = 0.0
        return out

    def validate(self, model, paths: list[Path], progress: bool = True) -> dict:
        """OpenKBP scores of whole-volume predictions for the patients at `paths`."""
        return self._score(model, self._whole_volumes(paths, progress))

    # ---- prediction
    @staticmethod
    def _assemble(patient: Patient, values: np.ndarray) -> np.ndarray:
        dose = np.zeros(patient.grid, np.float32)
        dose[patient.possible_dose_mask] = np.clip(values, 0.0, None)
        return dose

    def predict_patient(self, model, patient: Patient, batch_size: int = 32, tta: bool = False, sampling=None,
                        device=None, autocast=None) -> tuple[np.ndarray, np.ndarray | None]:
        """(the dose in Gy on the patient's grid, the ensemble's spread): with fold boosters, the
        standard deviation of the boosters' doses in each voxel (before the DVH calibration), else None."""
        X = feature_matrix(patient, self.voxels, patient.possible_dose_mask)
        members = model.predict_members(X)
        dose = self._calibrate(patient, self._assemble(patient, members.mean(axis=0).astype(np.float32)))
        std = None
        if len(members) > 1:
            std = np.zeros(patient.grid, np.float32)
            std[patient.possible_dose_mask] = np.clip(members, 0.0, None).std(axis=0)
        return dose, std

    def dvh_estimate(self, patient: Patient, dose: np.ndarray) -> list[dict] | None:
        """The DVH estimate of a predicted `dose` (from `predict_patient`): per structure and metric the
        predicted value and its bands (rows of `<id>_dvh.csv`), or None for a model without bands."""
        if self.dvh_bands is None:
            return None
        return self.dvh_bands.table(structure_cases(dose, patient.structures, patient.voxel_volume_mm3,
                                                    self.dvh_bands.curve_gy))

    # ---- checkpoints
    def checkpoint_config(self) -> dict:
        """Also the feature names in column order: a model is only valid with the features it learned."""
        config = {**super().checkpoint_config(), "feature_names": feature_names(self.voxels)}
        if self.dvh_calibration is not None:
            config["dvh_calibration"] = self.dvh_calibration.to_dict()
        if self.ensemble_members:
            config["ensemble_members"] = self.ensemble_members
        if self.dvh_bands is not None:
            config["dvh_bands"] = self.dvh_bands.to_dict()
        return config

    @classmethod
    def from_checkpoint(cls, config: dict, source: str = "config.json") -> BoostedDoseTask:
        task = super().from_checkpoint(config, source)
        saved = config.get("feature_names")
        if saved is not None and list(saved) != feature_names(task.voxels):
            raise ConfigError(source, "this model was trained on features this version of rtgen does not compute "
                                      f"in the same order ({len(saved)} saved, {len(feature_names(task.voxels))} now); "
                                      "retrain it with `rtgen train`")
        if config.get("dvh_calibration") is not None:
            task.dvh_calibration = DVHCalibration.from_dict(config["dvh_calibration"], source)
        if config.get("dvh_bands") is not None:
            task.dvh_bands = DVHBands.from_dict(config["dvh_bands"], source)
        members = config.get("ensemble_members", 0)
        if not isinstance(members, int) or isinstance(members, bool) or not 0 <= members <= 100:
            raise ConfigError(source, f"ensemble_members must be a whole number from 0 to 100, not {members!r}")
        task.ensemble_members = members
        return task

    @staticmethod
    def member_file(weights: Path, i: int) -> Path:
        return Path(weights).with_name(f"{Path(weights).stem}.fold{i}.txt")

    def save_model(self, model, run_dir: Path) -> Path:
        path = Path(run_dir) / self.weights_file
        for i, member in enumerate(model.members):
            atomic_write_text(self.member_file(path, i), member.to_text())
        atomic_write_text(path, model.to_text())
        return path

    def load_model(self, weights: Path):
        def read(path: Path):
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise RtgenError(f"{path}: cannot be read as a LightGBM text model ({e})") from None
            return self.build_model().load_text(text, str(path))

        model = read(Path(weights))
        model.members = [read(self.member_file(weights, i)) for i in range(self.ensemble_members)]
        return model

    def model_card(self, summary: dict) -> str:
        t, v = summary["training"], summary.get("validation", {})
        names = feature_names(self.voxels)
        refit = t.get("refit", False)
        return "\n".join([
            f"# {summary['model']['name']} dose predictor (gradient-boosted trees)", "",
            "Predicts a 3D radiotherapy dose (Gy) voxel by voxel inside the possible dose mask from hand features:",
            f"{', '.join(names)}.", "",
            "## Data",
            f"- Training: {t['train_patients']} patients, {t['train_voxels']:,} voxels drawn inside the possible dose mask"
            f" (near PTV surfaces x{self.voxels.edge_weight:g}, in OARs x{self.voxels.oar_weight:g}).",
            "- Validation: refit on the training and validation patients together (`data.refit`), with the recipe"
            f" fixed beforehand on validation; the scores below are {v.get('cv_folds', 0)}-fold cross-validated over"
            f" all {t['train_patients']}." if refit else
            f"- Validation: {t['val_patients']} patients (early stopping on {t['val_voxels']:,} voxels; scores on whole volumes).",
            "- OpenKBP: Babier et al., Medical Physics 48:5549-5561, 2021.", "",
            "## Model",
            f"- LightGBM, {t['trees']} trees"
            + (f" in each of {1 + self.ensemble_members} boosters" if self.ensemble_members else "")
            + f", {summary['model']['parameters']:,} leaves; "
            + ", ".join(f"{k} {v}" for k, v in summary["model"]["architecture"].items()) + ".",
            "- Saved as LightGBM's text model format (`model.txt`), never pickled.", "",
            "## Training",
            f"- Hardware: {t['hardware']}.",
            f"- Time: {t['seconds'] / 60:.1f} min ({t['feature_seconds']:.0f} s features, {t['fit_seconds']:.0f} s fitting"
            f", {t.get('calibration_seconds', 0):.0f} s out-of-fold predictions, DVH calibration and bands).",
            *([f"- DVH calibration: {self.calibration.folds}-fold out-of-fold predictions of the training patients fit a"
               f" ridge regression (ridge {self.calibration.ridge:g}"
               + ("" if self.dvh_calibration.legacy else " on standardised statistics")
               + ") per structure and DVH metric; predictions are"
               " reshaped inside the PTVs and OARs it covers ("
               + ", ".join(sorted(self.dvh_calibration.coefficients)) + ")."]
              if self.dvh_calibration is not None else []),
            *([f"- Ensemble: the {self.ensemble_members} fold boosters (`model.fold<i>.txt`) predict with the main one;"
               " the dose is their mean, and their spread is the voxel uncertainty map (`<id>_std.nii.gz`)."]
              if self.ensemble_members else []),
            *self._band_lines(), "",
            "## Cross-validated scores (OpenKBP definitions)" if refit else "## Validation scores (OpenKBP definitions)",
            *([f"- {v['cv_folds']}-fold cross-validation over {v['cv_patients']} patients (each patient predicted by the"
               " booster that did not see it, calibrated by a DVH calibration fitted on the other folds): dose score"
               f" {v['cv_dose_score']:.3f} Gy, DVH score {v['cv_dvh_score']:.3f} Gy."] if "cv_dose_score" in v else []),
            *([f"- Validation patients: dose score {v.get('dose_score', float('nan')):.3f} Gy; DVH score"
               f" {v.get('dvh_score', float('nan')):.3f} Gy; prediction"
               f" {v.get('predict_seconds_per_patient', float('nan')):.1f} s per patient once features are computed."]
              if not refit else []),
            *([f"- Without the DVH calibration: dose score {v['uncalibrated_dose_score']:.3f} Gy, DVH score"
               f" {v['uncalibrated_dvh_score']:.3f} Gy."] if "uncalibrated_dvh_score" in v else []),
            *[_coverage_line(name, v[key]) for key, name in
              (("band_coverage", "validation patients"), ("cv_band_coverage", "cross-validated, each fold's bands"
                                                                               " calibrated on the other folds"))
              if key in v],
            "- Reproduce: `rtgen train CONFIG data.refit=true` with this folder's training config (the cross-validated"
            " scores and coverage are computed by the training itself and recorded in config.json)." if refit else
            "- Reproduce: `rtgen predict --model THIS_FOLDER --patients VALIDATION_SPLIT --out pred &&"
            " rtgen evaluate --pred pred --ref VALIDATION_SPLIT`.", "",
        ])

    def _band_lines(self) -> list[str]:
        if self.dvh_bands is None:
            return []
        levels = " and ".join(f"{p * 100:g} %" for p in self.dvh_bands.levels)
        return [f"- DVH estimate bands ({levels}): normalised split-conformal intervals around each predicted DVH"
                " metric (OAR mean and D0.1cc, PTV D99/D95/D50/D1, and the DVH curve at"
                f" {self.dvh_bands.curve_gy[0]:g}-{self.dvh_bands.curve_gy[-1]:g} Gy), calibrated on the out-of-fold"
                " predictions, their width scaled per patient and structure by a difficulty model"
                " (`rtgen.dosimetry.bands`); `rtgen predict` writes them to `<id>_dvh.csv`."]



def _coverage_line(name: str, coverage: dict) -> str:
    parts = [f"{level} % bands cover {c['coverage'] * 100:.1f} % of {c['cases']:,} reference values"
             f" (mean width {c['mean_width_gy']:.2f} Gy for dose metrics, {c['mean_width_pct']:.1f} % for curve points)"
             for level, c in coverage.items()]
    return f"- Band coverage ({name}): " + "; ".join(parts) + "."
