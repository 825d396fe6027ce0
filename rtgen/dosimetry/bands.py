"""DVH estimate bands: a predicted DVH metric with a central interval that holds the true value with
a stated probability (80 % and 95 % by default), per structure and per patient.

How (normalised split-conformal prediction, Lei et al., JASA 113:1094, 2018; Papadopoulos et al.,
2008): a dose model that was fitted with k folds predicts every training patient from the boosters
that did not see it (out of fold). For each structure and metric, those predictions and the
reference values give residuals r = reference - predicted. A difficulty model says how large |r|
should be for this structure in this patient: a ridge regression of log(|r| + floor) on what the
prediction itself shows (the structure's volume, its overlap with the targets, its predicted dose
spread, the predicted value). The conformity score of a case is |r| / difficulty, and the band at
level p is

    predicted +- q_p * difficulty,

with q_p the ceil((n + 1) p) / n empirical quantile of the n calibration scores. The difficulty model
that gives a case its score is fitted on the other folds (cross-fitting), so no score comes from a
model that saw it; the shipped difficulty model is refitted on every fold. Widths thus differ from
patient to patient, and coverage holds at the stated level over patients like the calibration ones.

Metrics: OAR mean and D_0.1cc, target D_99/D_95/D_50/D_1 (Gy), and the DVH curve V_x (% of the
structure's volume receiving at least x Gy) at fixed dose levels, banded where the predicted
curve is neither 0 % nor 100 % (elsewhere the prediction is flat there and no band is drawn).
Curve points share one difficulty model and quantile per structure, with the dose level and the
curve's local slope among the difficulty's inputs. Pure NumPy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtgen.core.errors import DataError, RtgenError
from rtgen.core.structures import OARS, STRUCTURES, TARGETS, targets_union
from rtgen.dosimetry.dvh import dose_at_volume_cc, dose_at_volume_percent

LEVELS = (0.80, 0.95)
CURVE_GY = tuple(float(x) for x in range(5, 81, 5))
TARGET_METRICS = ("D_99", "D_95", "D_50", "D_1")
OAR_METRICS = ("mean", "D_0.1_cc")
CURVE = "V"  # the metric family of the curve points: rows are named V_<x>Gy
FLOOR = {"Gy": 0.1, "%": 0.5}  # added to |r| before the log: a difficulty never collapses to 0
MIN_CASES = 20  # fewer calibration cases of a structure and metric: no band for it (a band at level p
# also needs at least p / (1 - p) cases)
WIDE = 1.5  # a structure whose bands are this many times their usual width is flagged as wide


def wide_definition(level: str = "80") -> str:
    """What a "wide" flag means, in words (for pages and files)."""
    return (f"averaged over the structure's DVH metrics, its {level} % bands are more than {WIDE:g} times as wide as "
            "usual for that structure and metric (their median width over the patients the bands were calibrated on)")


def metric_unit(metric: str) -> str:
    return "%" if metric.startswith("V_") else "Gy"


def curve_metric(gy: float) -> str:
    return f"V_{gy:g}Gy"


def _family(metric: str) -> str:
    return CURVE if metric.startswith("V_") else metric


@dataclass
class Case:
    """One structure's metric in one patient: what the difficulty model reads, the prediction, and
    (for calibration) the reference value and the patient's fold."""

    structure: str
    metric: str
    predicted: float
    features: np.ndarray
    reference: float | None = None
    fold: int = 0
    patient: str = ""


def _volumes(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """V_x in % at each dose level x (a sorted search: one pass over the structure's voxels)."""
    s = np.sort(values)
    return 100.0 * (s.size - np.searchsorted(s, levels, side="left")) / s.size


def structure_cases(dose: np.ndarray, structures: dict[str, np.ndarray], voxel_volume_mm3: float,
                    curve_gy: tuple[float, ...] = CURVE_GY, reference: np.ndarray | None = None) -> list[Case]:
    """Every banded metric of a predicted `dose`, with the difficulty inputs; with a `reference` dose,
    each case also holds the reference value."""
    union = targets_union(structures)
    n_targets = sum(1 for t in TARGETS if t in structures and structures[t].any())
    levels = np.asarray(curve_gy, float)
    half = 2.5
    cases = []
    for name in TARGETS + OARS:
        m = structures.get(name)
        if m is None or not m.any():
            continue
        values = dose[m]
        ref = reference[m] if reference is not None else None
        log_cc = math.log(m.sum() * voxel_volume_mm3 / 1000.0)
        overlap = float((m & union).mean()) if union is not None and name in OARS else float(n_targets)
        d99, d50, d1 = (dose_at_volume_percent(values, p) for p in (99.0, 50.0, 1.0))
        spread = (d1 - d99) / 10.0

        def add(metric: str, predicted: float, ref_value: float | None, extra: tuple = ()) -> None:
            scale = 100.0 if metric_unit(metric) == "%" else 70.0
            x = np.array([1.0, predicted / scale, log_cc, overlap, spread, d50 / 70.0, *extra])
            cases.append(Case(name, metric, float(predicted), x, ref_value))

        if name in TARGETS:
            for metric in TARGET_METRICS:
                p = float(metric[2:])
                add(metric, dose_at_volume_percent(values, p),
                    dose_at_volume_percent(ref, p) if ref is not None else None)
        else:
            add("mean", float(values.mean()), float(ref.mean()) if ref is not None else None)
            add("D_0.1_cc", dose_at_volume_cc(values, 0.1, voxel_volume_mm3),
                dose_at_volume_cc(ref, 0.1, voxel_volume_mm3) if ref is not None else None)
        v = _volumes(values, levels)
        slopes = (_volumes(values, levels - half) - _volumes(values, levels + half)) / (2 * half)
        v_ref = _volumes(ref, levels) if ref is not None else None
        for i, gy in enumerate(levels):
            if 0.0 < v[i] < 100.0:  # a flat predicted curve (all or nothing) is not banded
                add(curve_metric(gy), float(v[i]), float(v_ref[i]) if v_ref is not None else None,
                    (gy / 70.0, slopes[i] / 10.0, v[i] * (100.0 - v[i]) / 2500.0))
    return cases


def metric_value(values: np.ndarray, metric: str, voxel_volume_mm3: float) -> float:
    """One banded metric of a structure's voxel doses: mean, D_0.1_cc, D_<x> (percent) or V_<x>Gy."""
    values = np.asarray(values)
    if metric == "mean":
        return float(values.mean())
    if metric == "D_0.1_cc":
        return dose_at_volume_cc(values, 0.1, voxel_volume_mm3)
    if metric.startswith("V_") and metric.endswith("Gy"):
        return float(_volumes(values, np.array([float(metric[2:-2])]))[0])
    if metric.startswith("D_"):
        return dose_at_volume_percent(values, float(metric[2:]))
    raise RtgenError(f"{metric!r} is not a DVH metric rtgen bands (mean, D_0.1_cc, D_<x>, V_<x>Gy)")


COLUMNS = ("structure", "metric", "unit", "predicted")


def to_csv(rows: list[dict]) -> str:
    """`<id>_dvh.csv`: one row per structure and metric, the bands' bounds per level, and `wide`."""
    if not rows:
        return ",".join(COLUMNS) + "\n"
    header = list(rows[0])
    lines = [",".join(header)]
    for r in rows:
        lines.append(",".join(str(int(r[k])) if isinstance(r[k], bool) else str(r[k]) for k in header))
    return "\n".join(lines) + "\n"


def from_csv(text: str, source: str) -> list[dict]:
    """The rows of a `<id>_dvh.csv` (as `to_csv` writes them), each checked: a structure rtgen knows, a
    metric it bands in its unit, and paired lower_<level>/upper_<level> columns. A malformed file is
    one error naming it (and the line)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise RtgenError(f"{source}: empty DVH estimate (expected a header {','.join(COLUMNS)},...)")
    header = lines[0].split(",")
    if tuple(header) == COLUMNS and len(lines) == 1:  # no metric of the patient is banded
        return []
    if tuple(header[:4]) != COLUMNS or not any(h.startswith("lower_") for h in header):
        raise RtgenError(f"{source}: not a DVH estimate (the header must start {','.join(COLUMNS)} and give "
                         "lower_<level>/upper_<level> columns)")
    for k in header[4:]:
        level = k.removeprefix("lower_").removeprefix("upper_")
        ok = k == "wide" or (k != level and level.replace(".", "", 1).isdigit() and 0 < float(level) < 100
                             and {f"lower_{level}", f"upper_{level}"} <= set(header))
        if not ok:
            raise DataError(source, f"column {k!r}: a DVH estimate gives lower_<level>, upper_<level> (level in %, "
                                    "both) and wide", line=1)
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        cells = line.split(",")
        if len(cells) != len(header):
            raise RtgenError(f"{source}: line {n} has {len(cells)} fields, the header {len(header)}")
        row: dict = dict(zip(header, cells))
        try:
            for k in header[3:]:
                row[k] = bool(int(row[k])) if k == "wide" else float(row[k])
        except ValueError:
            raise RtgenError(f"{source}: line {n} holds a value that is not a number") from None
        if row["structure"] not in STRUCTURES:
            raise DataError(source, f"names the structure {row['structure']!r}, which rtgen does not know "
                                    f"({', '.join(STRUCTURES)})", line=n)
        try:  # a metric rtgen computes (100 voxels of 10 mm3: 0.1 cc is 10 of them)
            metric_value(np.zeros(100), row["metric"], 10.0)
        except RtgenError as e:
            raise DataError(source, str(e), line=n) from None
        except ValueError:  # D_<x> with x outside 0-100
            raise DataError(source, f"{row['metric']!r} is not a DVH metric", line=n) from None
        if row["unit"] != metric_unit(row["metric"]):
            raise DataError(source, f"gives {row['metric']} in {row['unit']!r}, not {metric_unit(row['metric'])!r}",
                            line=n)
        rows.append(row)
    return rows


def dvh_estimate_path(folder: str | Path, patient_id: str) -> Path:
    """Where a patient's DVH estimate lies: `<id>_dvh.csv` beside its predicted dose."""
    return Path(folder) / f"{patient_id}_dvh.csv"


def write_dvh_estimate(folder: str | Path, patient_id: str, rows: list[dict]) -> Path:
    """Write `<id>_dvh.csv` into `folder` (atomically), as `rtgen predict` does."""
    from rtgen.core.atomic import atomic_write_text

    path = dvh_estimate_path(folder, patient_id)
    atomic_write_text(path, to_csv(rows))
    return path


def read_dvh_estimate(folder: str | Path, patient_id: str) -> list[dict] | None:
    """The rows of `<id>_dvh.csv` in `folder`, None when there is none; a malformed file raises one
    error that names it."""
    path = dvh_estimate_path(folder, patient_id)
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot be read as a DVH estimate ({e})") from None
    return from_csv(text, str(path))


def _key(case: Case) -> tuple[str, str]:
    return case.structure, _family(case.metric)


def _fit_difficulty(cases: list[Case], ridge: float) -> np.ndarray:
    A = np.stack([c.features for c in cases])
    floor = FLOOR[metric_unit(cases[0].metric)]
    b = np.log(np.abs(np.array([c.reference - c.predicted for c in cases])) + floor)
    penalty = ridge * np.eye(A.shape[1])
    penalty[0, 0] = 0.0
    return np.linalg.solve(A.T @ A + penalty, A.T @ b)


def _quantile(scores: np.ndarray, level: float) -> float:
    """The split-conformal quantile: the ceil((n + 1) level)-th smallest score (inf if n is too small)."""
    n = scores.size
    k = math.ceil((n + 1) * level)
    return float(np.sort(scores)[k - 1]) if 0 < k <= n else math.inf


@dataclass
class DVHBands:
    """Difficulty coefficients and conformal quantiles per (structure, metric family)."""

    levels: tuple[float, ...] = LEVELS
    curve_gy: tuple[float, ...] = CURVE_GY
    ridge: float = 1.0
    difficulty: dict[str, list[float]] = field(default_factory=dict)  # "structure/family" -> coefficients
    quantiles: dict[str, list[float]] = field(default_factory=dict)  # "structure/family" -> one per level
    typical_width: dict[str, float] = field(default_factory=dict)  # median width of the first level's band
    cases: dict[str, int] = field(default_factory=dict)

    @classmethod
    def fit(cls, cases: list[Case], levels: tuple[float, ...] = LEVELS, curve_gy: tuple[float, ...] = CURVE_GY,
            ridge: float = 1.0, min_cases: int = MIN_CASES) -> DVHBands:
        """Calibrate on out-of-fold `cases` (each with its reference value and fold)."""
        bands = cls(tuple(levels), tuple(curve_gy), float(ridge))
        groups: dict[tuple[str, str], list[Case]] = {}
        for c in cases:
            if c.reference is not None and np.isfinite(c.reference):
                groups.setdefault(_key(c), []).append(c)
        scores: dict[tuple[str, str], np.ndarray] = {}
        for key, group in groups.items():
            if len(group) < min_cases:
                continue
            folds = np.array([c.fold for c in group])
            s = np.empty(len(group))
            for f in np.unique(folds):  # cross-fitting: a case's difficulty from the other folds
                held = folds == f
                rest = [c for c, h in zip(group, held) if not h]
                coef = _fit_difficulty(rest if len(rest) >= min_cases else group, ridge)
                for i in np.flatnonzero(held):
                    s[i] = abs(group[i].reference - group[i].predicted) / _scale(group[i], coef)
            scores[key] = s
            bands.difficulty["/".join(key)] = [float(v) for v in _fit_difficulty(group, ridge)]
            bands.cases["/".join(key)] = len(group)
        for key, s in scores.items():
            q = [_quantile(s, p) for p in levels]
            if all(np.isfinite(q)):  # too few cases for the highest level: no band
                bands.quantiles["/".join(key)] = q
            else:
                del bands.difficulty["/".join(key)]
        for key, group in groups.items():
            name = "/".join(key)
            if name in bands.quantiles:
                widths = [hi - lo for lo, hi in (bands.interval(c)[0] for c in group)]
                bands.typical_width[name] = float(np.median(widths))
        return bands

    def interval(self, case: Case) -> list[tuple[float, float]]:
        """(lower, upper) per level for one case, clipped to what the metric can be (0 Gy; 0-100 %)."""
        name = "/".join(_key(case))
        if name not in self.quantiles:
            raise RtgenError(f"no band for {case.structure} {case.metric}: too few calibration cases")
        width = _scale(case, np.asarray(self.difficulty[name]))
        top = 100.0 if metric_unit(case.metric) == "%" else math.inf
        return [(max(0.0, case.predicted - q * width), min(top, case.predicted + q * width))
                for q in self.quantiles[name]]

    def table(self, cases: list[Case]) -> list[dict]:
        """Rows of `<id>_dvh.csv`: structure, metric, unit, predicted, lower/upper per level, and whether
        the structure's bands are wide: the mean, over its DVH metrics (Gy), of each first-level band's
        width over that metric's median width in calibration exceeds `WIDE` (curve points follow their
        structure)."""
        rows, ratios = [], {}
        for c in cases:
            name = "/".join(_key(c))
            if name not in self.quantiles:
                continue
            row = {"structure": c.structure, "metric": c.metric, "unit": metric_unit(c.metric),
                   "predicted": round(c.predicted, 3)}
            bounds = self.interval(c)
            for p, (lo, hi) in zip(self.levels, bounds):
                row[f"lower_{p * 100:g}"], row[f"upper_{p * 100:g}"] = round(lo, 3), round(hi, 3)
            typical = self.typical_width.get(name, 0.0)
            if typical > 0:
                ratios.setdefault((c.structure, row["unit"]), []).append((bounds[0][1] - bounds[0][0]) / typical)
            rows.append(row)
        for row in rows:
            r = ratios.get((row["structure"], "Gy")) or ratios.get((row["structure"], "%")) or [0.0]
            row["wide"] = bool(np.mean(r) > WIDE)
        return rows

    def to_dict(self) -> dict:
        return {"levels": list(self.levels), "curve_gy": list(self.curve_gy), "ridge": self.ridge,
                "difficulty": self.difficulty, "quantiles": self.quantiles,
                "typical_width": self.typical_width, "cases": self.cases}

    @classmethod
    def from_dict(cls, data: dict, source: str = "config.json") -> DVHBands:
        try:
            bands = cls(tuple(float(p) for p in data["levels"]), tuple(float(x) for x in data["curve_gy"]),
                        float(data["ridge"]),
                        {k: [float(v) for v in c] for k, c in data["difficulty"].items()},
                        {k: [float(v) for v in q] for k, q in data["quantiles"].items()},
                        {k: float(v) for k, v in data.get("typical_width", {}).items()},
                        {k: int(v) for k, v in data.get("cases", {}).items()})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise RtgenError(f"{source}: dvh_bands is malformed ({e})") from None
        if not all(0.0 < p < 1.0 for p in bands.levels):
            raise RtgenError(f"{source}: dvh_bands levels must lie between 0 and 1, not {list(bands.levels)}")
        for name, q in bands.quantiles.items():
            if name not in bands.difficulty or len(q) != len(bands.levels):
                raise RtgenError(f"{source}: dvh_bands of {name} has the wrong shape")
        return bands


def _scale(case: Case, coef: np.ndarray) -> float:
    if coef.size != case.features.size:
        raise RtgenError(f"{case.structure} {case.metric}: the band's difficulty model has {coef.size} inputs, "
                         f"this version computes {case.features.size}")
    floor = FLOOR[metric_unit(case.metric)]
    return float(max(np.exp(np.clip(case.features @ coef, -10.0, 10.0)), floor))


def coverage(pairs: list[tuple[dict, float]], levels: tuple[float, ...] = LEVELS) -> dict:
    """Per level: the share of reference values inside their band (pooled; in Gy and in % apart), how
    many there were, and the mean band width, over (row of `DVHBands.table`, reference value) pairs."""
    out = {}
    for p in levels:
        lo_key, hi_key = f"lower_{p * 100:g}", f"upper_{p * 100:g}"
        inside: dict[str, list[bool]] = {"Gy": [], "%": []}
        widths: dict[str, list[float]] = {"Gy": [], "%": []}
        for row, ref in pairs:
            if ref is None or not np.isfinite(ref) or lo_key not in row:
                continue
            inside[row["unit"]].append(bool(row[lo_key] <= ref <= row[hi_key]))
            widths[row["unit"]].append(row[hi_key] - row[lo_key])
        pooled = inside["Gy"] + inside["%"]
        out[f"{p * 100:g}"] = {
            "coverage": float(np.mean(pooled)) if pooled else math.nan, "cases": len(pooled),
            "coverage_gy": float(np.mean(inside["Gy"])) if inside["Gy"] else math.nan,
            "coverage_pct": float(np.mean(inside["%"])) if inside["%"] else math.nan,
            "mean_width_gy": float(np.mean(widths["Gy"])) if widths["Gy"] else math.nan,
            "mean_width_pct": float(np.mean(widths["%"])) if widths["%"] else math.nan}
    return out


def case_coverage(bands: DVHBands, cases: list[Case]) -> dict:
    """`coverage` of `bands` over `cases` that hold reference values."""
    return coverage([(row, c.reference) for c in cases if c.reference is not None for row in bands.table([c])],
                    bands.levels)


def cross_validated_coverage(cases: list[Case], levels: tuple[float, ...] = LEVELS, folds: int | None = None,
                             min_cases: int = MIN_CASES) -> dict:
    """Coverage of bands calibrated without each fold, on that fold, pooled: what a new patient's bands
    are expected to cover. Each fold's bands are fitted (with their own cross-fitting) on the other folds."""
    pairs = []
    for f in sorted({c.fold for c in cases}) if folds is None else range(folds):
        held = [c for c in cases if c.fold == f]
        if held:
            bands = DVHBands.fit([c for c in cases if c.fold != f], levels, min_cases=min_cases)
            pairs += [(row, c.reference) for c in held for row in bands.table([c])]
    return coverage(pairs, tuple(levels))
