"""One patient's plan: influence matrix, fluence optimisation, leaf sequencing, delivered dose."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtgen.core.errors import ConfigError, DataError
from rtgen.planning.engine import BeamSet, Influence, check_plannable, influence_matrix, patient_origin
from rtgen.planning.fluence import SequencedPlan, neighbour_pairs, sequence_plan
from rtgen.planning.optimise import Objective, OptimisationResult, optimise


@dataclass(frozen=True)
class PlanSettings:
    """Everything a plan depends on besides the patient and the input dose. `levels`: intensity levels of
    the leaf sequencing; `leaf_width` in mm (None: the beamlet size); `mu_per_weight`: monitor units per
    unit beamlet weight (pyRadPlan's generic 6 MV machine gives 1.054 Gy per unit weight at the depth of
    maximum dose of a 10 x 10 cm field at 100 cm SSD, `benchmarks/planning_calibration.py`: 105 MU at
    1 cGy per MU); `fractions`: the weights are the whole course's, as the input dose is, so a
    fraction's MU are mu_per_weight x weight / fractions."""

    beams: BeamSet = field(default_factory=BeamSet)
    objective: Objective = field(default_factory=Objective)
    levels: int = 10
    leaf_width: float | None = None
    mu_per_weight: float = 105.0
    fractions: int = 35

    def __post_init__(self):
        if not (isinstance(self.levels, int) and 1 <= self.levels <= 100):
            raise ConfigError("sequencing", f"levels {self.levels!r}: expected an integer from 1 to 100")
        if self.leaf_width is not None and not 1.0 <= self.leaf_width <= 20.0:
            raise ConfigError("sequencing", f"leaf width {self.leaf_width!r} mm: expected 1 to 20 mm")
        if not (isinstance(self.fractions, int) and self.fractions >= 1):
            raise ConfigError("plan", f"fractions {self.fractions!r}: expected an integer >= 1")
        if not self.mu_per_weight > 0:
            raise ConfigError("plan", f"mu_per_weight {self.mu_per_weight!r}: expected a number > 0")


@dataclass
class PlanResult:
    patient_id: str
    influence: Influence
    optimisation: OptimisationResult
    sequenced: SequencedPlan
    fluence_dose: np.ndarray  # Gy, whole course, of the optimised fluence
    delivered_dose: np.ndarray  # Gy, whole course, of the sequenced segments
    settings: PlanSettings
    timings: dict
    from_cache: bool

    def mu(self) -> list[float]:
        """Monitor units per fraction of each beam."""
        scale = self.settings.mu_per_weight / self.settings.fractions
        return [scale * (s.total_weight if s is not None else 0.0) for _, s in self.sequenced.beams]

    def segment_mu(self) -> list[list[float]]:
        scale = self.settings.mu_per_weight / self.settings.fractions
        return [[scale * seg.weight for seg in s.segments] if s is not None else [] for _, s in self.sequenced.beams]

    def summary(self, input_dose: np.ndarray, body: np.ndarray) -> dict:
        """The per-patient row: sizes, times, and how close the plan is to its input (MAE in the body)."""
        mae = lambda a, b: float(np.abs(a[body] - b[body]).mean())
        return {
            "patient": self.patient_id, "beams": len(self.influence.gantry_angles), "beamlets": self.influence.n_beamlets,
            "bixel_mm": self.influence.bixel_mm, "influence_cached": self.from_cache,
            "objective_form": self.settings.objective.form,
            **{f"{k}_s": round(v, 2) for k, v in self.timings.items()},
            "iterations": self.optimisation.iterations, "objective": self.optimisation.objective,
            "mae_to_input_gy": mae(self.fluence_dose, input_dose),
            "mae_to_input_sequenced_gy": mae(self.delivered_dose, input_dose),
            "sequencing_dose_change_gy": mae(self.delivered_dose, self.fluence_dose),
            "segments": self.sequenced.n_segments, "mu_per_fraction": round(sum(self.mu()), 1),
            "lost_fluence_fraction": self.sequenced.lost_fraction,
        }


def make_plan(patient, input_dose: np.ndarray, settings: PlanSettings, origin=None, cache_dir: Path | None = None,
              report: Callable[[str, str], None] | None = None,
              beam_progress: Callable[[int, int], None] | None = None,
              iteration_progress: Callable[[int, float], None] | None = None,
              goals: dict[str, dict[str, float]] | None = None) -> PlanResult:
    """Plan `patient` to mimic `input_dose` (Gy, the whole course, on the patient's grid). `origin`: patient
    mm of voxel [0, 0, 0] (default: the grid centred on 0). `report(stage, message)` hears each stage end.
    `goals`: the OAR goals of the ``bands`` objective (`rtgen.planning.optimise.band_goals`)."""
    check_plannable(patient)
    if settings.objective.form == "bands" and goals is None:
        raise ConfigError("objective", "the bands form needs the OAR goals of a DVH estimate")
    input_dose = np.asarray(input_dose, np.float32)
    if input_dose.shape != tuple(patient.grid):
        raise DataError(patient.id, f"the input dose is on a grid of {input_dose.shape}, the patient's CT on "
                                    f"{tuple(patient.grid)}: plan from a dose on the patient's own grid")
    say = report or (lambda stage, message: None)
    origin = patient_origin(patient) if origin is None else origin
    timings = {}
    t = time.perf_counter()
    inf, cached = influence_matrix(patient, settings.beams, origin, cache_dir, beam_progress)
    timings["influence"] = time.perf_counter() - t
    say("influence", f"{inf.n_beamlets} beamlets in {len(inf.gantry_angles)} beams, "
                     f"{'read from the cache' if cached else 'computed'} in {timings['influence']:.1f} s")
    body = patient.possible_dose_mask.ravel()
    position = np.full(body.size, -1, np.int64)
    position[inf.body_index] = np.arange(inf.body_index.size)
    rows = {}
    for name, mask in patient.structures.items():
        r = position[np.flatnonzero(mask.ravel())]
        rows[name] = r[r >= 0]
    # weights for the whole course: D w is the course's dose, w / fractions a fraction's weights (MU)
    t = time.perf_counter()
    opt = optimise(inf.matrix, input_dose.ravel()[inf.body_index], rows, settings.objective,
                   patient.voxel_volume_mm3, iteration_progress, goals=goals, pairs=neighbour_pairs(inf))
    timings["optimisation"] = time.perf_counter() - t
    fluence_dose = inf.dose(opt.weights)
    say("optimisation", f"{opt.iterations} iterations in {timings['optimisation']:.1f} s")
    t = time.perf_counter()
    seq = sequence_plan(inf, opt.weights, settings.levels, settings.leaf_width)
    delivered = inf.dose(seq.weights)
    timings["sequencing"] = time.perf_counter() - t
    say("sequencing", f"{seq.n_segments} segments, recomputed in {timings['sequencing']:.1f} s")
    return PlanResult(patient.id, inf, opt, seq, fluence_dose, delivered, settings, timings, cached)
