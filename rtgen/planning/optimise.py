"""Fluence optimisation: beamlet weights w >= 0 whose dose D w mimics an input dose (a prediction).

The objective, all terms in Gy^2 and each a mean over its voxels so that the weights compare across
patients, is the sum of:

* **mimicking**, in one of three forms (the first two as OpenKBP-Opt's models, Babier et al. 2022):
  - ``voxel``: ``mimic_weight * mean_body (D w - p)^2``, the input dose p voxel by voxel;
  - ``dvh``: the input's DVH points as one-sided DVH objectives (Wu and Mohan's form: the voxels
    between the goal and the plan's current value of the point are pulled to the goal): for each
    OAR its D0.1cc and mean no higher than the input's, for each target its D99 and D95 no lower
    and its D1 no higher, each with weight 1; plus the voxel term at ``mimic_weight`` (the dose
    outside the structures has no DVH point);
  - ``bands``: a DVH estimate's bands as objectives, as knowledge-based planning uses its estimates
    (RapidPlan places the optimisation objectives at the lower edge of each OAR's estimate): for
    each OAR its mean and D0.1cc no higher than the lower edge of that metric's band (`band_goals`
    reads them from the rows of ``<id>_dvh.csv``, `rtgen.dosimetry.bands`), one-sided DVH-point
    objectives as in ``dvh`` with weight 1; the targets' objectives are the prescription terms
    below; plus the voxel term at ``mimic_weight``. The goals are given (``goals``), not read here;
* **prescription** on each target t (prescription R_t, OpenKBP's 56/63/70 Gy):
  ``target_weight * mean_t max(0, R_t - D w)^2`` (coverage) and
  ``hot_weight * mean_t max(0, D w - hot_factor * R_t)^2`` (hot spots), where a lower-dose
  target's coverage is judged without the higher-dose targets nested in it, as its mask is;
* **smoothness** of each beam's fluence map: ``smooth_weight * mean_pairs ((w_i - w_j) / w0)^2`` over
  the beamlets side by side in a map (`rtgen.planning.fluence.neighbour_pairs`), w0 the flat start's
  weight: a quadratic penalty on the map's gradient (as in Webb's and Spirou's fluence smoothing),
  which leaves the dose almost unchanged and cuts the segments and monitor units a modulated map
  needs once sequenced.

L-BFGS-B (scipy) with bounds w >= 0 from a flat start scaled so that the mean target dose meets
the mean prescription. One iteration costs about one product with D and one with its transpose.
The products are taken in float32, D's own type: a float64 vector would make scipy copy all of D's
values to float64 at every product (1-2 GB for a large head-and-neck plan), three times slower;
everything else is float64.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rtgen.core.errors import ConfigError, DataError
from rtgen.core.structures import OARS, PRESCRIPTION_GY, TARGETS
from rtgen.dosimetry.dvh import dose_at_volume_cc, dose_at_volume_percent

FORMS = ("voxel", "dvh", "bands")
BAND_METRICS = ("mean", "D_0.1_cc")  # an OAR's banded DVH points that become objectives


@dataclass(frozen=True)
class Objective:
    form: str = "dvh"
    mimic_weight: float = 1.0
    target_weight: float = 1.0
    hot_weight: float = 0.5
    hot_factor: float = 1.07
    iterations: int = 150
    smooth_weight: float = 10.0

    def __post_init__(self):
        if self.form not in FORMS:
            raise ConfigError("objective", f"form {self.form!r}: expected one of {', '.join(FORMS)}")
        for name in ("mimic_weight", "target_weight", "hot_weight", "smooth_weight"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0 and np.isfinite(v)):
                raise ConfigError("objective", f"{name} must be a number >= 0, got {v!r}")
        if not 1.0 <= self.hot_factor <= 2.0:
            raise ConfigError("objective", f"hot_factor {self.hot_factor!r}: expected 1 to 2 (x prescription)")
        if not (isinstance(self.iterations, int) and self.iterations >= 1):
            raise ConfigError("objective", f"iterations must be an integer >= 1, got {self.iterations!r}")


@dataclass
class OptimisationResult:
    weights: np.ndarray
    objective: float
    iterations: int
    evaluations: int
    seconds: float
    history: list[float] = field(default_factory=list)


def _dvh_terms(structures: dict, pred_body: np.ndarray, voxel_volume_mm3: float) -> list[tuple]:
    """(rows within the body, goal Gy, kind, volume) per DVH point of the input dose: kind 'max'/'min' of a
    point at `volume` (fraction of the hottest voxels), or 'mean_max'."""
    terms = []
    for name in OARS:
        rows = structures.get(name)
        if rows is None or rows.size == 0:
            continue
        v = pred_body[rows]
        n = max(1.0, float(np.round(100.0 / voxel_volume_mm3)))  # 0.1 cc, OpenKBP's count
        terms.append((rows, dose_at_volume_cc(v, 0.1, voxel_volume_mm3), "max", min(1.0, n / v.size)))
        terms.append((rows, float(v.mean()), "mean_max", None))
    for name in TARGETS:
        rows = structures.get(name)
        if rows is None or rows.size == 0:
            continue
        v = pred_body[rows]
        terms.append((rows, dose_at_volume_percent(v, 99), "min", 0.99))
        terms.append((rows, dose_at_volume_percent(v, 95), "min", 0.95))
        terms.append((rows, dose_at_volume_percent(v, 1), "max", 0.01))
    return terms


def band_goals(rows: list[dict], level: str = "80", source: str = "DVH estimate") -> dict[str, dict[str, float]]:
    """OAR name -> {"mean": Gy, "D_0.1_cc": Gy}: the lower edge (``lower_<level>``) of each OAR metric's
    band in the rows of a DVH estimate (`rtgen.dosimetry.bands.from_csv`); targets and curve points are
    left out (the targets' objectives are their prescriptions)."""
    column = f"lower_{level}"
    goals: dict[str, dict[str, float]] = {}
    for row in rows:
        if row["structure"] in OARS and row["metric"] in BAND_METRICS:
            if column not in row:
                raise DataError(source, f"has no {level} % band (no {column} column)")
            value = float(row[column])
            if not (np.isfinite(value) and value >= 0):
                raise DataError(source, f"{row['structure']} {row['metric']}: {column} is {value!r}, "
                                                "expected a dose >= 0 Gy")
            goals.setdefault(row["structure"], {})[row["metric"]] = value
    return goals


def _band_terms(structures: dict, goals: dict[str, dict[str, float]], voxel_volume_mm3: float) -> list[tuple]:
    """`_dvh_terms`' tuples for the OAR goals of `band_goals`."""
    terms = []
    for name in OARS:
        rows, goal = structures.get(name), goals.get(name, {})
        if rows is None or rows.size == 0:
            continue
        if "D_0.1_cc" in goal:
            n = max(1.0, float(np.round(100.0 / voxel_volume_mm3)))  # 0.1 cc, OpenKBP's count
            terms.append((rows, goal["D_0.1_cc"], "max", min(1.0, n / rows.size)))
        if "mean" in goal:
            terms.append((rows, goal["mean"], "mean_max", None))
    return terms


def _dvh_point(d: np.ndarray, goal: float, kind: str, volume: float | None) -> tuple[float, np.ndarray]:
    """Value and gradient (w.r.t. d) of one DVH objective on the structure's doses `d`."""
    g = np.zeros_like(d)
    if kind == "mean_max":
        excess = float(d.mean()) - goal
        if excess <= 0:
            return 0.0, g
        g[:] = 2 * excess / d.size
        return excess**2, g
    current = float(np.quantile(d, 1.0 - volume))  # the dose at `volume` of the structure
    if kind == "max":
        sel = (d > goal) & (d <= current)
        diff = d[sel] - goal
    else:
        sel = (d < goal) & (d >= current)
        diff = d[sel] - goal
    if not sel.any():
        return 0.0, g
    g[sel] = 2 * diff / d.size
    return float(np.sum(diff**2) / d.size), g


def optimise(matrix, pred_body: np.ndarray, structures: dict, objective: Objective, voxel_volume_mm3: float,
             progress: Callable[[int, float], None] | None = None, start: np.ndarray | None = None,
             goals: dict[str, dict[str, float]] | None = None, pairs: np.ndarray | None = None) -> OptimisationResult:
    """Weights for the influence `matrix` (rows = body voxels) mimicking `pred_body` (the input dose on the
    same rows); `structures`: name -> row indices within the body; `goals`: the ``bands`` form's OAR goals
    (`band_goals`); `pairs`: the neighbouring beamlets of the smoothing term (`neighbour_pairs`)."""
    from scipy.optimize import minimize

    pred = np.asarray(pred_body, np.float64)
    if pred.shape != (matrix.shape[0],):
        raise DataError("dose", f"input dose has {pred.shape[0]} body voxels, the influence matrix {matrix.shape[0]}")
    if matrix.shape[1] == 0:
        raise DataError("beams", "the beam set has no beamlet")
    targets = [(structures[t], PRESCRIPTION_GY[t]) for t in TARGETS if t in structures and structures[t].size]
    if not targets:
        raise DataError("structures", "no target inside the body: nothing to plan for")
    if objective.form == "bands" and goals is None:
        raise ConfigError("objective", "the bands form needs the DVH estimate's goals (band_goals)")
    if objective.form == "dvh":
        dvh = _dvh_terms(structures, pred, voxel_volume_mm3)
    elif objective.form == "bands":
        dvh = _band_terms(structures, goals, voxel_volume_mm3)
    else:
        dvh = []
    n = pred.size
    mt = matrix.T.tocsr() if hasattr(matrix, "tocsr") else matrix.T
    history: list[float] = []
    last = [float("nan")]
    if start is None:
        ones = np.ones(matrix.shape[1])
        d1 = np.asarray(matrix @ ones.astype(np.float32), np.float64)
        mean_t = np.mean(np.concatenate([d1[rows] for rows, _ in targets]))
        rx = np.mean([rx for _, rx in targets])
        start = ones * (rx / mean_t if mean_t > 0 else 1.0)
    smooth = objective.smooth_weight > 0 and pairs is not None and len(pairs) > 0
    if smooth:
        w0 = float(np.mean(start)) or 1.0
        pi, pj = np.asarray(pairs)[:, 0], np.asarray(pairs)[:, 1]
        smooth_scale = objective.smooth_weight / (len(pairs) * w0**2)

    def f(w):
        d = np.asarray(matrix @ w.astype(np.float32), np.float64)  # products in the matrix's float32: see below
        r = d - pred
        value = objective.mimic_weight * float(r @ r) / n
        grad_d = (2 * objective.mimic_weight / n) * r
        for rows, rx in targets:
            dt = d[rows]
            under = np.minimum(dt - rx, 0.0)
            over = np.maximum(dt - objective.hot_factor * rx, 0.0)
            value += (objective.target_weight * float(under @ under) + objective.hot_weight * float(over @ over)) / rows.size
            grad_d[rows] += (2 * objective.target_weight * under + 2 * objective.hot_weight * over) / rows.size  # rows unique
        for rows, goal, kind, volume in dvh:
            v, g = _dvh_point(d[rows], goal, kind, volume)
            value += v
            grad_d[rows] += g
        grad_w = np.asarray(mt @ grad_d.astype(np.float32), np.float64)
        if smooth:
            diff = w[pi] - w[pj]
            value += smooth_scale * float(diff @ diff)
            np.add.at(grad_w, pi, 2 * smooth_scale * diff)
            np.add.at(grad_w, pj, -2 * smooth_scale * diff)
        last[0] = value
        return value, grad_w

    t = time.perf_counter()

    def callback(xk):  # the objective of the last evaluation, which L-BFGS-B's line search accepted
        history.append(last[0])
        if progress is not None:
            progress(len(history), history[-1])

    res = minimize(f, np.asarray(start, np.float64), jac=True, method="L-BFGS-B",
                   bounds=[(0.0, None)] * matrix.shape[1],
                   options={"maxiter": objective.iterations, "maxfun": objective.iterations * 3},
                   callback=callback)
    return OptimisationResult(np.maximum(res.x, 0.0), float(res.fun), int(res.nit), int(res.nfev),
                              time.perf_counter() - t, history)
