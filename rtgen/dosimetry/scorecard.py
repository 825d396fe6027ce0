"""A clinical scorecard for head-and-neck SIB plans, and the scorecard reward of DiffKT3D (sec. 3.4).

A scorecard is a list of criteria. Each criterion measures one DVH-style quantity of one structure:

* ``DoseAtVolume``: the dose (Gy) received by at least ``volume`` % or cc of the structure (D95%,
  D0.03cc ~ Dmax), as `rtgen.dosimetry.dvh` computes Dx% and Dcc (OpenKBP convention);
* ``VolumeAtDose``: the volume (% of the structure, or cc) receiving at least ``dose_gy`` Gy (V70Gy);
* ``MeanDose``: the mean dose (Gy);

and maps it to points with a piecewise-linear function given by breakpoints ``(value, points)``:
linear between breakpoints, flat beyond the first and the last. Breakpoint values must strictly
increase and points must be >= 0 and monotone (a criterion rewards more of a quantity or less of
it); the criterion's maximum is its largest breakpoint points. A scorecard's ``total`` is the sum
of the points of the criteria whose structure the patient has; criteria of absent (missing or
empty) structures are skipped, reported as ``absent``, and taken out of the achievable maximum,
so ``fraction = total / achievable max`` compares patients with and without, say, a PTV63.

Prescriptions. A criterion with ``scale_with="PTV70"`` has its dose levels (the breakpoint values
and limit of a DoseAtVolume or MeanDose criterion; the ``dose_gy`` level of a VolumeAtDose one,
whose breakpoints are volumes) multiplied by ``prescription / template prescription`` of that
target, as the paper rescales PTV thresholds to the patient's prescription. The template's
prescriptions are taken from the target names (PTV70 -> 70 Gy, as OpenKBP names its targets);
``evaluate(..., prescriptions={"PTV70": 66.0})`` scores a 66 Gy high-dose target with every PTV70
threshold scaled by 66/70. OAR criteria do not scale.

Reward (eq. 9 and the "Normalization & Anchors" paragraph). ``reward`` is
``sum_i w_i * points_i / max_i / sum_i w_i`` over the scored criteria (the weighted sum of
normalised criterion scores, divided by the weights' sum so it lies in [0, 1] whatever structures
a patient has; within one case the division is a constant and changes no ranking), minus two
optional anchors against reward hacking: a hinge penalty ``hard_penalty * sum_hard max(0, excess)
/ span`` for the criteria flagged ``hard`` (excess beyond the criterion's ``limit``, in units of
the span of its breakpoint values, so a miss by a whole scoring ramp costs ``hard_penalty``), and
an MAE anchor ``mae_weight * MAE / highest prescription`` against a reference dose when one is
given (the GDP-HMM MAE, `rtgen.dosimetry.gdp_hmm`). ``optimality_probability`` turns the rewards
of the candidates of one case into eq. (10)'s clipped optimality probabilities.

The default template (`Scorecard.default_hn_sib`) approximates the public Varian HN-SIB-BPI
70/63/56 Gy bilateral-neck scorecard (paper ref [58]) from standard head-and-neck constraints
(QUANTEC/RTOG-style: PTV D95% >= prescription, D0.03cc <= 107 %, brainstem Dmax <= 54 Gy, cord
Dmax <= 45 Gy, parotid mean <= 26 Gy, ...); the published template could not be consulted, so the
breakpoints and points are a plausible clinical choice, not Varian's numbers. It is a plain
dataclass with a JSON form (`to_dict`/`from_dict`, `from_json`): an institution replaces it with
its own.

Pure NumPy; one 128^3 patient is scored in a few tens of milliseconds (each structure's voxels are
gathered once per call).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtgen.core.datafile import read_json_or_yaml
from rtgen.core.errors import DataError, RtgenError
from rtgen.core.limits import DOSE_CEILING_GY
from rtgen.core.structures import TARGETS
from rtgen.dosimetry.checks import require_dose
from rtgen.dosimetry.dvh import (
    dmean,
    dose_at_volume_cc,
    dose_at_volume_percent,
    volume_at_dose_cc,
    volume_at_dose_percent,
)
from rtgen.dosimetry.gdp_hmm import GDP_HMM_THRESHOLD_GY, gdp_hmm_mae


class ScorecardError(RtgenError, ValueError):
    """A scorecard, criterion or scorecard input that cannot be used; the message names it."""


CRITERION_TYPES = ("DoseAtVolume", "VolumeAtDose", "MeanDose")
VOLUME_UNITS = ("%", "cc")
_CRITERION_KEYS = {"structure", "type", "breakpoints", "volume", "dose_gy", "volume_unit", "weight",
                   "scale_with", "hard", "limit"}


def _number(x, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)) or not math.isfinite(x):
        raise ScorecardError(f"{what} must be a finite number, got {x!r}")
    return float(x)


def _fmt(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Criterion:
    """One scorecard line: a metric of one structure and its piecewise-linear score.

    ``breakpoints``: ((metric value, points), ...), values strictly increasing, points >= 0 and
    monotone. ``volume`` (DoseAtVolume) is in ``volume_unit``; ``dose_gy`` (VolumeAtDose) is the dose
    level and ``volume_unit`` the unit of the result. ``weight`` (> 0) is the importance weight of
    the reward. ``scale_with`` names the target whose prescription scales the dose levels.
    ``hard`` criteria must have a ``limit`` (a lower limit when points rise with the value, an upper
    one when they fall) whose violation the reward's hinge penalises."""

    structure: str
    type: str
    breakpoints: tuple[tuple[float, float], ...]
    volume: float | None = None
    dose_gy: float | None = None
    volume_unit: str = "%"
    weight: float = 1.0
    scale_with: str | None = None
    hard: bool = False
    limit: float | None = None

    def __post_init__(self):
        where = f"criterion {self.structure!r} {self.type}"
        if not isinstance(self.structure, str) or not self.structure:
            raise ScorecardError(f"criterion structure must be a non-empty name, got {self.structure!r}")
        if self.type not in CRITERION_TYPES:
            raise ScorecardError(f"{where}: unknown criterion type {self.type!r}; expected one of "
                                 f"{', '.join(CRITERION_TYPES)}")
        if self.volume_unit not in VOLUME_UNITS:
            raise ScorecardError(f"{where}: volume_unit must be '%' or 'cc', got {self.volume_unit!r}")
        try:
            bps = tuple((_number(v, f"{where}: breakpoint value"), _number(p, f"{where}: breakpoint points"))
                        for v, p in self.breakpoints)
        except (TypeError, ValueError) as e:
            if isinstance(e, ScorecardError):
                raise
            raise ScorecardError(f"{where}: breakpoints must be (value, points) pairs, got {self.breakpoints!r}") from None
        object.__setattr__(self, "breakpoints", bps)
        if len(bps) < 2:
            raise ScorecardError(f"{where}: needs at least two breakpoints, got {len(bps)}")
        xs, ps = np.array([b[0] for b in bps]), np.array([b[1] for b in bps])
        if np.any(np.diff(xs) <= 0):
            raise ScorecardError(f"{where}: breakpoint values must strictly increase, got {[_fmt(x) for x in xs]}")
        if np.any(ps < 0):
            raise ScorecardError(f"{where}: breakpoint points must be >= 0, got {[_fmt(p) for p in ps]}")
        if not (np.all(np.diff(ps) >= 0) or np.all(np.diff(ps) <= 0)) or ps.max() == ps.min():
            raise ScorecardError(f"{where}: breakpoint points must be monotone and not all equal "
                                 f"(non-monotone breakpoints), got {[_fmt(p) for p in ps]}")
        if self.type != "VolumeAtDose" and xs[0] < 0:
            raise ScorecardError(f"{where}: breakpoint doses must be >= 0 Gy, got {_fmt(xs[0])}")
        if self.type == "VolumeAtDose" and self.volume_unit == "%" and (xs[0] < 0 or xs[-1] > 100):
            raise ScorecardError(f"{where}: breakpoint volumes must lie in 0-100 %")
        if self.type == "DoseAtVolume":
            if self.volume is None:
                raise ScorecardError(f"{where}: needs a volume (e.g. 95 for D95%, 0.03 with volume_unit 'cc')")
            v = _number(self.volume, f"{where}: volume")
            if v <= 0 or (self.volume_unit == "%" and v > 100):
                raise ScorecardError(f"{where}: volume must be in (0, 100] % or > 0 cc, got {_fmt(v)}")
            object.__setattr__(self, "volume", v)
        elif self.volume is not None:
            raise ScorecardError(f"{where}: only DoseAtVolume criteria take a volume")
        if self.type == "VolumeAtDose":
            if self.dose_gy is None:
                raise ScorecardError(f"{where}: needs a dose_gy level (e.g. 70 for V70Gy)")
            d = _number(self.dose_gy, f"{where}: dose_gy")
            if d < 0 or d > DOSE_CEILING_GY:
                raise ScorecardError(f"{where}: dose_gy must be in 0-{DOSE_CEILING_GY:g} Gy, got {_fmt(d)}")
            object.__setattr__(self, "dose_gy", d)
        elif self.dose_gy is not None:
            raise ScorecardError(f"{where}: only VolumeAtDose criteria take a dose_gy level")
        w = _number(self.weight, f"{where}: weight")
        if w <= 0:
            raise ScorecardError(f"{where}: weight must be > 0, got {_fmt(w)}")
        object.__setattr__(self, "weight", w)
        if not isinstance(self.hard, bool):
            raise ScorecardError(f"{where}: hard must be true or false, got {self.hard!r}")
        if self.limit is not None:
            object.__setattr__(self, "limit", _number(self.limit, f"{where}: limit"))
        elif self.hard:
            raise ScorecardError(f"{where}: a hard criterion needs a limit")
        if self.scale_with is not None and not isinstance(self.scale_with, str):
            raise ScorecardError(f"{where}: scale_with must be a target name, got {self.scale_with!r}")

    @property
    def name(self) -> str:
        """The metric as a planner writes it: D95%, D0.03cc, V70Gy, V20cc, Mean."""
        if self.type == "DoseAtVolume":
            return f"D{_fmt(self.volume)}{self.volume_unit}"
        if self.type == "VolumeAtDose":
            return f"V{_fmt(self.dose_gy)}Gy" + ("[cc]" if self.volume_unit == "cc" else "")
        return "Mean"

    @property
    def unit(self) -> str:
        return ("%" if self.volume_unit == "%" else "cc") if self.type == "VolumeAtDose" else "Gy"

    @property
    def max_points(self) -> float:
        return max(p for _, p in self.breakpoints)

    @property
    def rises(self) -> bool:
        """True when more of the quantity earns more points (coverage); False for sparing."""
        return self.breakpoints[-1][1] > self.breakpoints[0][1]

    def to_dict(self) -> dict:
        d = {"structure": self.structure, "type": self.type, "breakpoints": [list(b) for b in self.breakpoints]}
        if self.volume is not None:
            d["volume"] = self.volume
        if self.dose_gy is not None:
            d["dose_gy"] = self.dose_gy
        if self.volume_unit != "%":
            d["volume_unit"] = self.volume_unit
        d["weight"] = self.weight
        if self.scale_with is not None:
            d["scale_with"] = self.scale_with
        if self.hard:
            d["hard"] = True
        if self.limit is not None:
            d["limit"] = self.limit
        return d

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "criterion") -> Criterion:
        if not isinstance(d, Mapping):
            raise ScorecardError(f"{where}: must be a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - _CRITERION_KEYS)
        if unknown:
            raise ScorecardError(f"{where}: unknown keys {unknown}; allowed {sorted(_CRITERION_KEYS)}")
        missing = [k for k in ("structure", "type", "breakpoints") if k not in d]
        if missing:
            raise ScorecardError(f"{where}: missing {', '.join(missing)}")
        bps = d["breakpoints"]
        if isinstance(bps, (str, bytes)) or not isinstance(bps, Iterable):
            raise ScorecardError(f"{where}: breakpoints must be a list of [value, points] pairs")
        pairs = []
        for b in bps:
            if isinstance(b, (str, bytes)) or not isinstance(b, Iterable) or len(b := list(b)) != 2:
                raise ScorecardError(f"{where}: each breakpoint must be a [value, points] pair, got {b!r}")
            pairs.append(tuple(b))
        return cls(**{**d, "breakpoints": tuple(pairs)})


@dataclass
class CriterionResult:
    """One scorecard row. `value`/`points` are None and `status` 'absent' when the structure is missing;
    `limit` and `scale` are as applied to this patient (scaled dose levels)."""

    structure: str
    metric: str
    unit: str
    value: float | None
    points: float | None
    max_points: float
    weight: float
    status: str  # "scored" or "absent"
    scale: float = 1.0
    hard: bool = False
    limit: float | None = None
    violation: float = 0.0  # hinge: excess beyond `limit` / span of the (scaled) breakpoint values

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ScorecardResult:
    rows: list[CriterionResult]
    template: str = ""

    @property
    def scored(self) -> list[CriterionResult]:
        return [r for r in self.rows if r.status == "scored"]

    @property
    def total(self) -> float:
        return float(sum(r.points for r in self.scored))

    @property
    def max_total(self) -> float:
        """The achievable maximum: the maxima of the criteria whose structure is present."""
        return float(sum(r.max_points for r in self.scored))

    @property
    def template_max(self) -> float:
        return float(sum(r.max_points for r in self.rows))

    @property
    def fraction(self) -> float:
        return self.total / self.max_total if self.max_total > 0 else float("nan")

    @property
    def absent(self) -> list[str]:
        return sorted({r.structure for r in self.rows if r.status == "absent"})

    @property
    def weighted_score(self) -> float:
        """Eq. (9) normalised: sum w_i points_i/max_i / sum w_i over the scored criteria, in [0, 1]."""
        rows = self.scored
        wsum = sum(r.weight for r in rows)
        return float(sum(r.weight * r.points / r.max_points for r in rows) / wsum) if wsum > 0 else float("nan")

    @property
    def hard_violation(self) -> float:
        """Sum over hard criteria of the hinge max(0, excess beyond the limit) / breakpoint span."""
        return float(sum(r.violation for r in self.scored if r.hard))

    def to_dict(self) -> dict:
        return {"template": self.template, "total": self.total, "max_total": self.max_total,
                "template_max": self.template_max, "fraction": self.fraction,
                "weighted_score": self.weighted_score, "hard_violation": self.hard_violation,
                "absent_structures": self.absent, "criteria": [r.to_dict() for r in self.rows]}


_RX_IN_NAME = re.compile(r"^PTV[_ ]?(\d+(?:\.\d+)?)$", re.IGNORECASE)


def prescription_from_name(name: str) -> float | None:
    """PTV70 -> 70.0 (OpenKBP names its targets by their prescription); None for any other name."""
    m = _RX_IN_NAME.match(name)
    return float(m.group(1)) if m else None


@dataclass
class Scorecard:
    """Criteria plus the prescriptions (Gy per target) their dose levels were written for."""

    criteria: tuple[Criterion, ...]
    name: str = "custom"
    template_prescriptions: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        self.criteria = tuple(self.criteria)
        if not self.criteria:
            raise ScorecardError(f"scorecard {self.name!r} has no criteria")
        for c in self.criteria:
            if not isinstance(c, Criterion):
                raise ScorecardError(f"scorecard {self.name!r}: criteria must be Criterion objects, got {c!r}")
        rx = dict(self.template_prescriptions)
        for c in self.criteria:  # a target named with its dose (PTV70) needs no explicit prescription
            if c.scale_with is not None and c.scale_with not in rx:
                guess = prescription_from_name(c.scale_with)
                if guess is None:
                    raise ScorecardError(f"scorecard {self.name!r}: criterion {c.structure} {c.name} scales with "
                                         f"{c.scale_with!r}, which has no template prescription (give one in "
                                         f"template_prescriptions)")
                rx[c.scale_with] = guess
        for t, v in rx.items():
            v = _number(v, f"scorecard {self.name!r}: template prescription of {t}")
            if not 0 < v <= DOSE_CEILING_GY:
                raise ScorecardError(f"scorecard {self.name!r}: template prescription of {t} must be in "
                                     f"(0, {DOSE_CEILING_GY:g}] Gy, got {_fmt(v)}")
            rx[t] = v
        self.template_prescriptions = rx

    # ----------------------------------------------------------------------------------------- I/O
    def to_dict(self) -> dict:
        return {"name": self.name, "template_prescriptions": dict(self.template_prescriptions),
                "criteria": [c.to_dict() for c in self.criteria]}

    @classmethod
    def from_dict(cls, d: Mapping) -> Scorecard:
        if not isinstance(d, Mapping):
            raise ScorecardError(f"a scorecard must be a mapping with 'criteria', got {type(d).__name__}")
        unknown = sorted(set(d) - {"name", "template_prescriptions", "criteria"})
        if unknown:
            raise ScorecardError(f"scorecard: unknown keys {unknown}; allowed name, template_prescriptions, criteria")
        crit = d.get("criteria")
        if not isinstance(crit, list):
            raise ScorecardError("scorecard: 'criteria' must be a list of criteria")
        rx = d.get("template_prescriptions", {})
        if not isinstance(rx, Mapping):
            raise ScorecardError("scorecard: 'template_prescriptions' must map target names to Gy")
        criteria = tuple(Criterion.from_dict(c, f"scorecard criterion {i + 1}") for i, c in enumerate(crit))
        return cls(criteria, str(d.get("name", "custom")), dict(rx))

    @classmethod
    def from_json(cls, path: str | Path) -> Scorecard:
        data = read_json_or_yaml(path, "scorecard file", yaml_allowed=False)
        try:
            return cls.from_dict(data)
        except ScorecardError as e:
            raise DataError(path, str(e)) from None

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def default_hn_sib(cls) -> Scorecard:
        """The head-and-neck SIB 70/63/56 Gy template (approximates Varian HN-SIB-BPI; see the module)."""
        return cls.from_dict(DEFAULT_HN_SIB)

    # ------------------------------------------------------------------------------------ scoring
    def _scales(self, prescriptions: Mapping[str, float] | None) -> dict[str, float]:
        rx = dict(self.template_prescriptions)
        if prescriptions is not None:
            if not isinstance(prescriptions, Mapping):
                raise ScorecardError(f"prescriptions must map target names to Gy, got {type(prescriptions).__name__}")
            for t, v in prescriptions.items():
                if t not in rx:
                    raise ScorecardError(f"prescription given for {t!r}, but no criterion of scorecard {self.name!r} "
                                         f"scales with it (targets: {', '.join(sorted(rx)) or 'none'})")
                v = _number(v, f"prescription of {t}")
                if not 0 < v <= DOSE_CEILING_GY:
                    raise ScorecardError(f"prescription of {t} must be in (0, {DOSE_CEILING_GY:g}] Gy, got {_fmt(v)}")
                rx[t] = v
        return {t: rx[t] / self.template_prescriptions[t] for t in rx}

    def evaluate(self, dose: np.ndarray, structures: Mapping[str, np.ndarray], voxel_volume_mm3: float,
                 prescriptions: Mapping[str, float] | None = None) -> ScorecardResult:
        """Score `dose` (Gy) on the patient's `structures` (boolean masks on the dose grid).

        `prescriptions` ({target: Gy}) rescales the criteria that scale with a target; by default
        each target has its template prescription (OpenKBP: the dose in the name)."""
        dose = require_dose(dose, "dose")
        if dose.ndim == 0:
            raise ScorecardError("dose must be an array on the structures' grid, got a scalar")
        vv = _number(voxel_volume_mm3, "voxel volume")
        if vv <= 0:
            raise ScorecardError(f"voxel volume must be > 0 mm^3, got {voxel_volume_mm3!r}")
        if not isinstance(structures, Mapping):
            raise ScorecardError(f"structures must map names to masks, got {type(structures).__name__}")
        scales = self._scales(prescriptions)
        values: dict[str, np.ndarray | None] = {}
        rows = []
        for c in self.criteria:
            if c.structure not in values:
                values[c.structure] = _structure_values(dose, structures, c.structure)
            v = values[c.structure]
            scale = scales[c.scale_with] if c.scale_with is not None else 1.0
            rows.append(_score(c, v, scale, vv))
        if not any(r.status == "scored" for r in rows):
            raise ScorecardError(f"none of the structures of scorecard {self.name!r} is present "
                                 f"({', '.join(sorted(values))}); the patient has {', '.join(sorted(structures)) or 'none'}")
        return ScorecardResult(rows, self.name)


def _structure_values(dose: np.ndarray, structures: Mapping[str, np.ndarray], name: str) -> np.ndarray | None:
    mask = structures.get(name)
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != dose.shape:
        raise ScorecardError(f"structure {name}: mask shape {mask.shape} does not match the dose grid {dose.shape}")
    if mask.dtype != bool:
        if mask.size and not np.isin(mask, (0, 1)).all():
            raise ScorecardError(f"structure {name}: mask holds values other than 0 and 1")
        mask = mask.astype(bool)
    v = dose[mask]
    return v if v.size else None


def _score(c: Criterion, values: np.ndarray | None, scale: float, voxel_volume_mm3: float) -> CriterionResult:
    xs = np.array([b[0] for b in c.breakpoints])
    ps = np.array([b[1] for b in c.breakpoints])
    limit = c.limit
    if c.type != "VolumeAtDose" and scale != 1.0:  # dose-valued breakpoints scale; volumes do not
        xs = xs * scale
        limit = None if limit is None else limit * scale
    row = CriterionResult(c.structure, c.name, c.unit, None, None, c.max_points, c.weight, "absent", scale, c.hard, limit)
    if values is None:
        return row
    if c.type == "DoseAtVolume":
        value = (dose_at_volume_percent(values, c.volume) if c.volume_unit == "%"
                 else dose_at_volume_cc(values, c.volume, voxel_volume_mm3))
    elif c.type == "VolumeAtDose":
        level = c.dose_gy * scale
        value = (volume_at_dose_percent(values, level) if c.volume_unit == "%"
                 else volume_at_dose_cc(values, level, voxel_volume_mm3))
    else:
        value = dmean(values)
    row.value, row.status = float(value), "scored"
    row.points = float(np.interp(value, xs, ps))
    if limit is not None:
        excess = (limit - value) if c.rises else (value - limit)
        row.violation = max(0.0, excess) / float(xs[-1] - xs[0])
    return row


# ------------------------------------------------------------------------------------------ reward
@dataclass
class RewardTerms:
    """The parts of the reward: value = score - hard_penalty * hinge - mae_weight * mae / mae_scale_gy."""

    score: float  # eq. (9), normalised to [0, 1]
    hinge: float  # sum of the hard criteria's normalised violations
    mae_gy: float | None  # GDP-HMM MAE against the reference, when one was given
    mae_scale_gy: float
    hard_penalty: float
    mae_weight: float

    @property
    def value(self) -> float:
        v = self.score - self.hard_penalty * self.hinge
        if self.mae_gy is not None:
            v -= self.mae_weight * self.mae_gy / self.mae_scale_gy
        return float(v)


def reward_terms(dose: np.ndarray, structures: Mapping[str, np.ndarray], voxel_volume_mm3: float, *,
                 scorecard: Scorecard | None = None, prescriptions: Mapping[str, float] | None = None,
                 reference: np.ndarray | None = None, body_mask: np.ndarray | None = None,
                 hard_penalty: float = 1.0, mae_weight: float = 1.0, mae_threshold_gy: float = GDP_HMM_THRESHOLD_GY,
                 result: ScorecardResult | None = None) -> RewardTerms:
    """The reward's terms for one candidate dose (see `reward`)."""
    hp = _number(hard_penalty, "hard_penalty")
    mw = _number(mae_weight, "mae_weight")
    if hp < 0 or mw < 0:
        raise ScorecardError(f"hard_penalty and mae_weight must be >= 0, got {hp:g} and {mw:g}")
    scorecard = scorecard or Scorecard.default_hn_sib()
    if result is None:
        result = scorecard.evaluate(dose, structures, voxel_volume_mm3, prescriptions)
    mae = None
    scale = 0.0
    if reference is not None:
        mae = gdp_hmm_mae(reference, dose, body_mask, mae_threshold_gy)
        rx = {**scorecard.template_prescriptions, **dict(prescriptions or {})}
        present = [float(v) for t, v in rx.items() if _present(structures, t)]
        scale = max(present) if present else max(rx.values(), default=70.0)
    return RewardTerms(result.weighted_score, result.hard_violation, mae, scale or 70.0, hp, mw)


def _present(structures: Mapping[str, np.ndarray], name: str) -> bool:
    m = structures.get(name)
    return m is not None and bool(np.asarray(m).any())


def reward(dose: np.ndarray, structures: Mapping[str, np.ndarray], voxel_volume_mm3: float, *,
           scorecard: Scorecard | None = None, prescriptions: Mapping[str, float] | None = None,
           reference: np.ndarray | None = None, body_mask: np.ndarray | None = None,
           hard_penalty: float = 1.0, mae_weight: float = 1.0, mae_threshold_gy: float = GDP_HMM_THRESHOLD_GY,
           result: ScorecardResult | None = None) -> float:
    """DiffKT3D's scalar scorecard reward of one candidate dose (eq. 9 plus the two anchors).

        R = sum_i w_i s_i / max_i / sum_i w_i                      (scored criteria; in [0, 1])
            - hard_penalty * sum_{hard i} max(0, excess_i) / span_i  (hinge on hard constraints)
            - mae_weight * MAE_GDP-HMM(reference, dose) / Rx_max   (only when `reference` is given)

    `excess_i` is how far the value lies beyond the criterion's (prescription-scaled) limit on the
    wrong side, `span_i` the width of its breakpoint values; Rx_max the highest prescription of the
    targets present. `hard_penalty=0` or `mae_weight=0` turns an anchor off. Pass `result` (this
    dose's `ScorecardResult`) to skip re-scoring. The default scorecard is `default_hn_sib()`."""
    return reward_terms(dose, structures, voxel_volume_mm3, scorecard=scorecard, prescriptions=prescriptions,
                        reference=reference, body_mask=body_mask, hard_penalty=hard_penalty, mae_weight=mae_weight,
                        mae_threshold_gy=mae_threshold_gy, result=result).value


def optimality_probability(rewards, dispersion: float | None = None) -> np.ndarray:
    """Eq. (10): the optimality probability of each candidate of ONE case (same inputs).

        p_k = clip(0.5 + 0.5 * (R_k - mean(R)) / dispersion, 0, 1)

    A candidate scoring the case's mean reward gets 0.5; one `dispersion` above it gets 1 (a
    clinically preferred plan), one `dispersion` below gets 0. The paper uses a running estimate of
    the reward's dispersion under the same conditions (e.g. an exponential moving average of the
    per-case standard deviation kept by the trainer); pass it as `dispersion` (> 0). With
    `dispersion=None` the standard deviation of these rewards is used, and if they are all equal
    every candidate gets 0.5."""
    r = np.asarray(rewards, np.float64)
    if r.ndim != 1 or r.size == 0:
        raise ScorecardError(f"rewards must be a non-empty 1-D list (the candidates of one case), got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ScorecardError("rewards must be finite")
    dev = r - r.mean()
    if np.all(np.abs(dev) <= 1e-12 * max(1.0, float(np.abs(r).max()))):
        dev[:] = 0.0  # equal rewards (up to rounding of the mean): every candidate is average
    if dispersion is None:
        z = float(r.std())
        if not dev.any():
            return np.full(r.shape, 0.5)
    else:
        z = _number(dispersion, "dispersion")
        if z <= 0:
            raise ScorecardError(f"dispersion must be > 0, got {z:g}")
    return np.clip(0.5 + 0.5 * dev / z, 0.0, 1.0)


# -------------------------------------------------------------------------------- default template
def _ptv(target: str, rx: float) -> list[dict]:
    """D95% and D99% of a PTV: full points at >= 100 % / 93 % of Rx, none at <= 95 % / 85 %."""
    pts95, pts99 = (10, 5) if target == "PTV70" else (8, 4)
    pct = lambda f: round(f * rx, 4)  # noqa: E731
    return [
        {"structure": target, "type": "DoseAtVolume", "volume": 95, "breakpoints": [[pct(0.95), 0], [rx, pts95]],
         "weight": 2.0, "scale_with": target, "hard": True, "limit": pct(0.95)},
        {"structure": target, "type": "DoseAtVolume", "volume": 99,
         "breakpoints": [[pct(0.85), 0], [pct(0.93), pts99]], "weight": 1.0, "scale_with": target},
    ]


DEFAULT_HN_SIB: dict = {
    "name": "HN-SIB 70/63/56 (approximates Varian HN-SIB-BPI)",
    "template_prescriptions": {t: float(prescription_from_name(t)) for t in TARGETS},
    "criteria": [
        *_ptv("PTV70", 70.0),
        # hot spot: D0.03cc <= 105 % full points, 107 % (74.9 Gy) 8 points, 115 % none
        {"structure": "PTV70", "type": "DoseAtVolume", "volume": 0.03, "volume_unit": "cc",
         "breakpoints": [[73.5, 10], [74.9, 8], [80.5, 0]], "weight": 1.0, "scale_with": "PTV70"},
        # volume above 107 %: <= 5 % full points, >= 20 % none
        {"structure": "PTV70", "type": "VolumeAtDose", "dose_gy": 74.9, "breakpoints": [[5, 5], [20, 0]],
         "weight": 1.0, "scale_with": "PTV70"},
        *_ptv("PTV63", 63.0),
        *_ptv("PTV56", 56.0),
        {"structure": "Brainstem", "type": "DoseAtVolume", "volume": 0.03, "volume_unit": "cc",
         "breakpoints": [[45, 10], [54, 6], [60, 0]], "weight": 2.0, "hard": True, "limit": 54},
        {"structure": "SpinalCord", "type": "DoseAtVolume", "volume": 0.03, "volume_unit": "cc",
         "breakpoints": [[38, 10], [45, 6], [50, 0]], "weight": 2.0, "hard": True, "limit": 45},
        {"structure": "RightParotid", "type": "MeanDose", "breakpoints": [[20, 10], [26, 6], [35, 0]], "weight": 1.0},
        {"structure": "LeftParotid", "type": "MeanDose", "breakpoints": [[20, 10], [26, 6], [35, 0]], "weight": 1.0},
        {"structure": "Mandible", "type": "DoseAtVolume", "volume": 0.03, "volume_unit": "cc",
         "breakpoints": [[70, 6], [73.5, 4], [77, 0]], "weight": 1.0},
        {"structure": "Larynx", "type": "MeanDose", "breakpoints": [[35, 6], [45, 3], [55, 0]], "weight": 1.0},
        {"structure": "Esophagus", "type": "MeanDose", "breakpoints": [[30, 6], [45, 3], [55, 0]], "weight": 1.0},
    ],
}
"""The default template as JSON-ready data (also `Scorecard.default_hn_sib().to_dict()`)."""
