"""Clinical criteria: pass/fail dose limits a plan (or any dose) must meet, and the share met.

A criterion is one DVH quantity of one structure and a limit on it:

* ``metric``: ``mean`` (mean dose), ``D<v>cc`` (the dose to the hottest ``v`` cc, OpenKBP's
  D0.1cc convention: the hottest max(1, round(v * 1000 / voxel volume)) voxels) or ``D<v>%`` (the
  dose received by at least ``v`` % of the structure, OpenKBP's D99 convention);
* exactly one limit: ``max_gy`` or ``min_gy`` (an absolute dose), or ``max_percent_rx`` or
  ``min_percent_rx`` (a percentage of the structure's prescription, ``prescription_gy``, which
  defaults to the OpenKBP target's: PTV70 -> 70 Gy);
* ``union_with``: structures whose voxels are added to the structure's before the metric is taken.
  OpenKBP's lower-dose targets exclude the higher-dose ones nested in them, so the coverage of
  PTV56 is judged on PTV56 | PTV63 | PTV70, as OpenKBP-Opt does.

A criterion whose structure is absent (missing or empty; the ``union_with`` structures do not make
it present) is not applicable: it counts neither as met nor as failed. ``share met`` is met /
applicable, per patient and pooled over patients.

The default set (`default_criteria`) is OpenKBP-Opt's (Babier et al., Phys. Med. Biol. 67 185012,
2022): Brainstem D0.1cc <= 50 Gy, SpinalCord D0.1cc <= 45 Gy, Mandible D0.1cc <= 73.5 Gy,
RightParotid and LeftParotid mean <= 26 Gy, Larynx and Esophagus mean <= 45 Gy, and each PTV's D99
>= 90 % of its prescription, on the PTV with the higher-dose PTVs inside it.

A criteria file (JSON, or YAML with a ``.yaml``/``.yml`` suffix) replaces the default set::

    {"name": "my clinic",
     "criteria": [
       {"structure": "Brainstem", "metric": "D0.1cc", "max_gy": 50},
       {"structure": "PTV56", "metric": "D99%", "min_percent_rx": 90, "union_with": ["PTV63", "PTV70"]}]}

Pure NumPy; a 128^3 patient is judged in a few tens of milliseconds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtgen.core.datafile import read_json_or_yaml
from rtgen.core.errors import DataError, RtgenError
from rtgen.core.structures import PRESCRIPTION_GY, STRUCTURES
from rtgen.dosimetry.checks import require_dose
from rtgen.dosimetry.dvh import dose_at_volume_cc, dose_at_volume_percent

LIMIT_KEYS = ("max_gy", "min_gy", "max_percent_rx", "min_percent_rx")
_KEYS = {"structure", "metric", "union_with", "prescription_gy", *LIMIT_KEYS}
_METRIC = re.compile(r"^(?:mean|D(\d+(?:\.\d+)?)(cc|%))$")
TOLERANCE_GY = 1e-4
"""A value within this of its limit meets it: doses are stored in float32 and written as text."""


class CriteriaError(RtgenError, ValueError):
    """A criterion or criteria set that cannot be used; the message names it."""


@dataclass(frozen=True)
class ClinicalCriterion:
    structure: str
    metric: str
    max_gy: float | None = None
    min_gy: float | None = None
    max_percent_rx: float | None = None
    min_percent_rx: float | None = None
    union_with: tuple[str, ...] = ()
    prescription_gy: float | None = None

    def __post_init__(self):
        where = f"criterion {self.structure!r} {self.metric!r}"
        if self.structure not in STRUCTURES:
            raise CriteriaError(f"{where}: unknown structure; rtgen's names are {', '.join(STRUCTURES)}")
        if not isinstance(self.metric, str) or not _METRIC.match(self.metric):
            raise CriteriaError(f"{where}: metric must be 'mean', 'D<volume>cc' (D0.1cc) or 'D<percent>%' (D99%)")
        m = _METRIC.match(self.metric)
        if m.group(2) == "%" and not 0 <= float(m.group(1)) <= 100:
            raise CriteriaError(f"{where}: a volume percentage must lie in 0-100")
        limits = [k for k in LIMIT_KEYS if getattr(self, k) is not None]
        if len(limits) != 1:
            raise CriteriaError(f"{where}: needs exactly one limit of {', '.join(LIMIT_KEYS)}, got "
                                f"{', '.join(limits) or 'none'}")
        value = getattr(self, limits[0])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise CriteriaError(f"{where}: {limits[0]} must be a number >= 0, got {value!r}")
        for name in self.union_with:
            if name not in STRUCTURES:
                raise CriteriaError(f"{where}: union_with names an unknown structure {name!r}")
        if "percent_rx" in limits[0] and self.prescription is None:
            raise CriteriaError(f"{where}: {limits[0]} needs prescription_gy (only OpenKBP targets have a default)")
        if self.prescription_gy is not None and (isinstance(self.prescription_gy, bool) or not isinstance(
                self.prescription_gy, (int, float)) or not 0 < self.prescription_gy < 200):
            raise CriteriaError(f"{where}: prescription_gy must be a dose in Gy (0-200), got {self.prescription_gy!r}")

    @property
    def prescription(self) -> float | None:
        return float(self.prescription_gy) if self.prescription_gy is not None else PRESCRIPTION_GY.get(self.structure)

    @property
    def upper(self) -> bool:
        """True for a maximum (the value must not exceed the limit), False for a minimum."""
        return self.max_gy is not None or self.max_percent_rx is not None

    @property
    def limit_gy(self) -> float:
        if self.max_gy is not None or self.min_gy is not None:
            return float(self.max_gy if self.max_gy is not None else self.min_gy)
        pct = self.max_percent_rx if self.max_percent_rx is not None else self.min_percent_rx
        return float(pct) / 100.0 * self.prescription

    @property
    def label(self) -> str:
        """'Brainstem D0.1cc <= 50 Gy', 'PTV56+PTV63+PTV70 D99% >= 50.4 Gy'."""
        name = "+".join((self.structure, *self.union_with))
        return f"{name} {self.metric} {'<=' if self.upper else '>='} {self.limit_gy:g} Gy"

    def value(self, dose: np.ndarray, structures: Mapping[str, np.ndarray], voxel_volume_mm3: float) -> float | None:
        """The metric in Gy, or None when the structure is absent."""
        mask = structures.get(self.structure)
        if mask is None or not np.any(mask):
            return None
        mask = np.asarray(mask, bool)
        for other in self.union_with:
            if other in structures:
                mask = mask | np.asarray(structures[other], bool)
        values = np.asarray(dose)[mask]
        m = _METRIC.match(self.metric)
        if m.group(1) is None:
            return float(values.mean())
        if m.group(2) == "cc":
            return dose_at_volume_cc(values, float(m.group(1)), voxel_volume_mm3)
        return dose_at_volume_percent(values, float(m.group(1)))

    def met(self, value: float) -> bool:
        return value <= self.limit_gy + TOLERANCE_GY if self.upper else value >= self.limit_gy - TOLERANCE_GY

    def to_dict(self) -> dict:
        d = {"structure": self.structure, "metric": self.metric}
        d.update({k: getattr(self, k) for k in LIMIT_KEYS if getattr(self, k) is not None})
        if self.union_with:
            d["union_with"] = list(self.union_with)
        if self.prescription_gy is not None:
            d["prescription_gy"] = self.prescription_gy
        return d

    @classmethod
    def from_dict(cls, d, where: str = "criterion") -> ClinicalCriterion:
        if not isinstance(d, Mapping):
            raise CriteriaError(f"{where} must be a mapping (structure, metric, one limit), got {type(d).__name__}")
        unknown = set(d) - _KEYS
        if unknown:
            raise CriteriaError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                                f"known: {', '.join(sorted(_KEYS))}")
        for key in ("structure", "metric"):
            if key not in d:
                raise CriteriaError(f"{where}: missing {key!r}")
        union = d.get("union_with", ())
        if isinstance(union, str) or not isinstance(union, (list, tuple)):
            raise CriteriaError(f"{where}: union_with must be a list of structure names")
        kwargs = {k: d[k] for k in (*LIMIT_KEYS, "prescription_gy") if k in d}
        try:
            return cls(structure=d["structure"], metric=d["metric"], union_with=tuple(union), **kwargs)
        except CriteriaError as e:
            raise CriteriaError(f"{where}: {e}") from None


@dataclass(frozen=True)
class CriteriaSet:
    name: str
    criteria: tuple[ClinicalCriterion, ...]

    def __post_init__(self):
        if not self.criteria:
            raise CriteriaError("a criteria set needs at least one criterion")
        labels = [c.label for c in self.criteria]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise CriteriaError(f"criterion listed twice: {', '.join(dup)}")

    def evaluate(self, dose: np.ndarray, structures: Mapping[str, np.ndarray], voxel_volume_mm3: float) -> CriteriaResult:
        dose = require_dose(dose)
        rows = []
        for c in self.criteria:
            v = c.value(dose, structures, voxel_volume_mm3)
            rows.append(CriterionOutcome(c.label, v, c.limit_gy, c.upper, None if v is None else c.met(v)))
        return CriteriaResult(self.name, rows)

    def to_dict(self) -> dict:
        return {"name": self.name, "criteria": [c.to_dict() for c in self.criteria]}

    @classmethod
    def from_dict(cls, d) -> CriteriaSet:
        if isinstance(d, list):
            d = {"criteria": d}
        if not isinstance(d, Mapping) or "criteria" not in d:
            raise CriteriaError("expected {\"name\": ..., \"criteria\": [...]} or a list of criteria")
        unknown = set(d) - {"name", "criteria"}
        if unknown:
            raise CriteriaError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; known: criteria, name")
        items = d["criteria"]
        if not isinstance(items, list):
            raise CriteriaError("'criteria' must be a list")
        name = d.get("name", "custom")
        if not isinstance(name, str):
            raise CriteriaError(f"'name' must be a string, got {name!r}")
        return cls(name, tuple(ClinicalCriterion.from_dict(c, f"criterion {i + 1}") for i, c in enumerate(items)))

    @classmethod
    def from_file(cls, path: str | Path) -> CriteriaSet:
        """A JSON criteria file, or YAML where the suffix is .yaml or .yml; any problem is one DataError naming it."""
        data = read_json_or_yaml(path, "criteria file")
        try:
            return cls.from_dict(data)
        except CriteriaError as e:
            raise DataError(path, str(e)) from None


@dataclass
class CriterionOutcome:
    label: str
    value: float | None  # Gy; None = structure absent
    limit_gy: float
    upper: bool
    met: bool | None  # None = not applicable

    def to_dict(self) -> dict:
        return {"value_gy": self.value, "limit_gy": self.limit_gy, "met": self.met}


@dataclass
class CriteriaResult:
    name: str
    rows: list[CriterionOutcome] = field(default_factory=list)

    @property
    def n_met(self) -> int:
        return sum(r.met is True for r in self.rows)

    @property
    def n_applicable(self) -> int:
        return sum(r.met is not None for r in self.rows)

    @property
    def share_met(self) -> float:
        return self.n_met / self.n_applicable if self.n_applicable else float("nan")

    def to_dict(self) -> dict:
        return {"met": self.n_met, "applicable": self.n_applicable, "share_met": self.share_met,
                "criteria": {r.label: r.to_dict() for r in self.rows}}


def pooled_share(results) -> float:
    """Criteria met / criteria applicable over all patients (each patient-criterion pair counts once)."""
    results = list(results)
    n = sum(r.n_applicable for r in results)
    return sum(r.n_met for r in results) / n if n else float("nan")


def default_criteria() -> CriteriaSet:
    """OpenKBP-Opt's clinical criteria (see the module docstring)."""
    oars = [("Brainstem", "D0.1cc", 50.0), ("SpinalCord", "D0.1cc", 45.0), ("Mandible", "D0.1cc", 73.5),
            ("RightParotid", "mean", 26.0), ("LeftParotid", "mean", 26.0), ("Larynx", "mean", 45.0),
            ("Esophagus", "mean", 45.0)]
    targets = sorted(PRESCRIPTION_GY, key=PRESCRIPTION_GY.get)
    crit = [ClinicalCriterion(s, m, max_gy=v) for s, m, v in oars]
    crit += [ClinicalCriterion(t, "D99%", min_percent_rx=90.0, union_with=tuple(targets[i + 1:]))
             for i, t in enumerate(targets)]
    return CriteriaSet("OpenKBP-Opt", tuple(crit))
