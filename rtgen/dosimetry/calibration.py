"""DVH calibration: reshape a predicted dose inside each structure so that its DVH metrics match
what the prediction itself says they should be.

Why: a voxel regressor predicts the mean dose a voxel gets given its features. Inside a PTV that
mean is too smooth (D1 too low, D99 too high, by 1-2 Gy on OpenKBP), and each structure's metrics
carry errors that its own predicted dose statistics predict. On out-of-fold predictions of the
training patients, `lightgbm_dose`'s PTV D95/D99/D1 were no better than the training median.
So per structure and metric, a ridge regression (fitted on out-of-fold predictions, never on the
patients it is judged on) maps the predicted dose statistics to the correction of the metric, and
`apply` moves the dose there. The ridge is fitted on standardised statistics, so that a fraction
(0-1) and a dose (Gy) are shrunk alike, and saved as plain coefficients of the raw statistics:

- targets: a monotone piecewise-linear map of the structure's dose through its predicted D99, D95,
  D50 and D1. A monotone map moves every percentile by the map itself, so the new D99/D95/D1 are the
  calibrated values; dose outside the knots is shifted with the nearest end;
- OARs: the linear map d -> m' + b (d - m) that gives the calibrated mean m' and D_0.1cc.

OARs are reshaped first and targets last, in increasing prescription, so that where structures
overlap the higher target has the last word. Pure NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rtgen.core.errors import RtgenError
from rtgen.core.structures import OARS, TARGETS, targets_union
from rtgen.dosimetry.dvh import dose_at_volume_cc, dose_at_volume_percent

TARGET_METRICS = ("D_99", "D_95", "D_1")
OAR_METRICS = ("mean", "D_0.1_cc")
TARGET_KNOTS = ("D_99", "D_95", "D_50", "D_1")  # the map's knots, in increasing dose
TARGET_FEATURES = ("D_99", "D_95", "D_50", "D_1", "log_cc", "n_targets", "log_cc_PTV70", "log_cc_PTV63",
                   "log_cc_PTV56")
OAR_FEATURES = ("mean", "D_0.1_cc", "D_50", "D_10", "log_cc", "in_targets")
FEATURES = {"targets": TARGET_FEATURES, "oars": OAR_FEATURES}  # the statistics a calibration fitted now reads
# calibrations saved before the standardised fit read these; their `in_targets_grid` (the organ's overlap
# with the targets as a share of the whole grid, not of the organ) is kept so that they predict as before
LEGACY_FEATURES = {"targets": TARGET_FEATURES[:6],
                   "oars": ("mean", "D_0.1_cc", "D_50", "D_10", "log_cc", "in_targets_grid")}
MIN_CASES = 8  # fewer training cases of a structure: leave it as predicted
MAX_OAR_SLOPE = 2.0


def structure_statistics(dose: np.ndarray, structures: dict[str, np.ndarray], voxel_volume_mm3: float) -> dict:
    """{structure: {name: value}}: what calibration reads of a predicted dose, per present structure."""
    stats = {}
    n_targets = sum(1 for t in TARGETS if t in structures and structures[t].any())
    union = targets_union(structures)
    # every target's volume, the same for each target of the patient (log(1 + cc): 0 when absent)
    volumes = {f"log_cc_{t}": float(np.log1p(structures[t].sum() * voxel_volume_mm3 / 1000.0))
               if t in structures else 0.0 for t in TARGETS}
    for t in TARGETS:
        m = structures.get(t)
        if m is None or not m.any():
            continue
        values = dose[m]
        row = {metric: dose_at_volume_percent(values, float(metric[2:])) for metric in TARGET_KNOTS}
        row["log_cc"] = float(np.log(m.sum() * voxel_volume_mm3 / 1000.0))
        row["n_targets"] = float(n_targets)
        stats[t] = {**row, **volumes}
    for o in OARS:
        m = structures.get(o)
        if m is None or not m.any():
            continue
        values = dose[m]
        overlap = int((m & union).sum()) if union is not None else 0
        stats[o] = {"mean": float(values.mean()), "D_0.1_cc": dose_at_volume_cc(values, 0.1, voxel_volume_mm3),
                    "D_50": dose_at_volume_percent(values, 50.0), "D_10": dose_at_volume_percent(values, 10.0),
                    "log_cc": float(np.log(m.sum() * voxel_volume_mm3 / 1000.0)),
                    "in_targets": overlap / len(values), "in_targets_grid": overlap / m.size}
    return stats


def _ridge(A: np.ndarray, b: np.ndarray, ridge: float) -> np.ndarray:
    """Ridge regression of b on A (first column: the intercept, not shrunk) on standardised columns,
    returned as coefficients of the raw columns."""
    mu, sd = A[:, 1:].mean(axis=0), A[:, 1:].std(axis=0)
    sd = np.where(sd > 1e-9, sd, np.inf)  # a constant column gets no weight
    Z = np.column_stack([np.ones(len(A)), (A[:, 1:] - mu) / sd])
    penalty = ridge * np.eye(Z.shape[1])
    penalty[0, 0] = 0.0
    w = np.linalg.solve(Z.T @ Z + penalty, Z.T @ b)
    weights = w[1:] / sd
    return np.concatenate([[w[0] - float(weights @ mu)], weights])


def _metrics(structure: str) -> tuple[str, ...]:
    return TARGET_METRICS if structure in TARGETS else OAR_METRICS


@dataclass
class DVHCalibration:
    """Ridge coefficients {structure: {metric: [intercept, weights...]}} of the raw statistics and the
    ridge used; `features`: the statistics they weigh, for targets and for OARs."""

    ridge: float = 100.0
    coefficients: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    cases: dict[str, int] = field(default_factory=dict)
    features: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(FEATURES))

    @property
    def legacy(self) -> bool:
        """Saved before the standardised fit: its own statistics, weighed by a ridge on raw ones."""
        return self.features == LEGACY_FEATURES

    def _names(self, structure: str) -> tuple[str, ...]:
        return self.features["targets" if structure in TARGETS else "oars"]

    def _design(self, structure: str, row: dict) -> np.ndarray:
        return np.array([1.0] + [row[k] for k in self._names(structure)])

    @classmethod
    def fit(cls, rows: list[tuple[dict, dict]], ridge: float = 100.0, min_cases: int = MIN_CASES) -> DVHCalibration:
        """`rows`: (structure_statistics of a prediction, reference DVH metrics {(metric, structure): Gy})
        per training patient, from a model that did not see that patient. `ridge` shrinks the weights of
        the standardised statistics: a lone weight fitted on n patients by n / (n + ridge)."""
        calibration = cls(ridge=float(ridge))
        for structure in TARGETS + OARS:
            for metric in _metrics(structure):
                A, b = [], []
                for stats, reference in rows:
                    if structure in stats and (metric, structure) in reference:
                        A.append(calibration._design(structure, stats[structure]))
                        b.append(reference[(metric, structure)] - stats[structure][metric])
                if len(b) < min_cases:
                    continue
                coef = _ridge(np.array(A), np.array(b), ridge)
                calibration.coefficients.setdefault(structure, {})[metric] = [float(c) for c in coef]
                calibration.cases[structure] = len(b)
        return calibration

    def targets_for(self, structure: str, row: dict) -> dict[str, float]:
        """The calibrated metrics of one structure, from its predicted statistics."""
        coefs = self.coefficients.get(structure, {})
        x = self._design(structure, row)
        return {metric: row[metric] + float(x @ np.asarray(c)) for metric, c in coefs.items()}

    def apply(self, dose: np.ndarray, structures: dict[str, np.ndarray], voxel_volume_mm3: float) -> np.ndarray:
        """The reshaped dose (a new array); voxels outside every calibrated structure are unchanged."""
        out = np.array(dose, dtype=np.float32, copy=True)
        stats = structure_statistics(out, structures, voxel_volume_mm3)
        for o in OARS:
            if o in stats and len(self.coefficients.get(o, {})) == len(OAR_METRICS):
                mask = structures[o]
                out[mask] = self._oar_map(out[mask], stats[o], self.targets_for(o, stats[o]))
        for t in TARGETS:
            if t in stats and len(self.coefficients.get(t, {})) == len(TARGET_METRICS):
                mask = structures[t]
                out[mask] = self._target_map(out[mask], stats[t], self.targets_for(t, stats[t]))
        return out

    @staticmethod
    def _oar_map(values: np.ndarray, row: dict, target: dict) -> np.ndarray:
        spread = row["D_0.1_cc"] - row["mean"]
        slope = 1.0 if spread < 1e-3 else float(np.clip((target["D_0.1_cc"] - target["mean"]) / spread,
                                                        1.0 / MAX_OAR_SLOPE, MAX_OAR_SLOPE))
        return np.clip(target["mean"] + slope * (values - row["mean"]), 0.0, None)

    @staticmethod
    def _target_map(values: np.ndarray, row: dict, target: dict) -> np.ndarray:
        src = np.array([row[m] for m in TARGET_KNOTS])
        if np.any(np.diff(src) <= 1e-4):  # a flat predicted PTV dose: no map is defined
            return values
        dst = np.maximum.accumulate(np.array([target.get(m, row[m]) for m in TARGET_KNOTS]))
        mapped = np.interp(values, src, dst)
        mapped = np.where(values < src[0], values + (dst[0] - src[0]), mapped)
        mapped = np.where(values > src[-1], values + (dst[-1] - src[-1]), mapped)
        return np.clip(mapped, 0.0, None)

    def to_dict(self) -> dict:
        return {"ridge": self.ridge, "coefficients": self.coefficients, "cases": self.cases,
                "features": {kind: list(names) for kind, names in self.features.items()}}

    @classmethod
    def from_dict(cls, data: dict, source: str = "config.json") -> DVHCalibration:
        try:
            calibration = cls(ridge=float(data["ridge"]),
                              coefficients={s: {m: [float(c) for c in v] for m, v in per.items()}
                                            for s, per in data["coefficients"].items()},
                              cases={s: int(n) for s, n in data.get("cases", {}).items()})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise RtgenError(f"{source}: dvh_calibration is malformed ({e})") from None
        features = data.get("features")
        calibration.features = LEGACY_FEATURES if features is None else next(
            (known for known in (FEATURES, LEGACY_FEATURES) if features == {k: list(v) for k, v in known.items()}), None)
        if calibration.features is None:
            raise RtgenError(f"{source}: dvh_calibration reads statistics this version of rtgen does not compute "
                             "in the same order; retrain the model with `rtgen train`")
        for structure, per in calibration.coefficients.items():
            if structure not in TARGETS + OARS:
                raise RtgenError(f"{source}: dvh_calibration names an unknown structure {structure!r}")
            for metric, coef in per.items():
                if metric not in _metrics(structure) or len(coef) != 1 + len(calibration._names(structure)):
                    raise RtgenError(f"{source}: dvh_calibration of {structure} {metric} has the wrong shape")
        return calibration

