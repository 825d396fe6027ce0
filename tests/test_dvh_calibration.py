"""DVH calibration: the maps move each structure's DVH metrics exactly where the regression says,
leave other voxels alone, and the regression recovers a known error from out-of-fold rows."""

import numpy as np
import pytest

from rtgen.core.errors import RtgenError
from rtgen.dosimetry import dvh_metrics
from rtgen.dosimetry.calibration import (
    OAR_FEATURES,
    TARGET_FEATURES,
    DVHCalibration,
    structure_statistics,
)

VOXEL_MM3 = 8.0  # 2 mm voxels: D_0.1cc is the hottest 12 or 13 voxels


def _phantom(seed=0):
    """A smooth dose with a PTV70 block, an overlapping PTV56 shell and two OARs."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:40, :40, :40]
    r = np.sqrt((z - 20) ** 2 + (y - 20) ** 2 + (x - 20) ** 2)
    dose = np.clip(72 - 1.5 * np.maximum(r - 6, 0) + rng.normal(0, 0.8, r.shape), 0, None).astype(np.float32)
    structures = {"PTV70": r <= 6, "PTV56": (r > 5) & (r <= 10),
                  "SpinalCord": (np.abs(y - 20) <= 1) & (np.abs(x - 36) <= 1),
                  "Brainstem": (r > 12) & (r <= 15) & (z < 15)}
    return dose, structures


def _intercepts(shifts: dict[str, dict[str, float]]) -> DVHCalibration:
    """A calibration that only adds a constant to each named metric."""
    coefficients = {}
    for structure, per in shifts.items():
        n = len(OAR_FEATURES if structure in ("SpinalCord", "Brainstem") else TARGET_FEATURES)
        coefficients[structure] = {m: [v] + [0.0] * n for m, v in per.items()}
    return DVHCalibration(ridge=0.0, coefficients=coefficients)


def test_target_map_moves_d99_d95_d1_exactly_and_keeps_the_rest():
    dose, structures = _phantom()
    before = dvh_metrics(dose, structures, VOXEL_MM3)
    calibration = _intercepts({"PTV70": {"D_99": -1.5, "D_95": -0.5, "D_1": 2.0}})
    after_dose = calibration.apply(dose, structures, VOXEL_MM3)
    after = dvh_metrics(after_dose, structures, VOXEL_MM3)
    for metric, shift in (("D_99", -1.5), ("D_95", -0.5), ("D_1", 2.0)):
        # exact up to the percentile's interpolation between two neighbouring voxels across a knot
        assert after[(metric, "PTV70")] == pytest.approx(before[(metric, "PTV70")] + shift, abs=0.05)
    outside = ~structures["PTV70"]
    np.testing.assert_array_equal(after_dose[outside], dose[outside])
    inside = structures["PTV70"]  # a monotone map: the order of voxel doses is kept
    assert (np.argsort(dose[inside], kind="stable") == np.argsort(after_dose[inside], kind="stable")).mean() > 0.99


def test_oar_map_gives_the_calibrated_mean_and_d01cc():
    dose, structures = _phantom()
    before = dvh_metrics(dose, structures, VOXEL_MM3)
    calibration = _intercepts({"Brainstem": {"mean": 2.0, "D_0.1_cc": 3.0}})
    after = dvh_metrics(calibration.apply(dose, structures, VOXEL_MM3), structures, VOXEL_MM3)
    assert after[("mean", "Brainstem")] == pytest.approx(before[("mean", "Brainstem")] + 2.0, abs=1e-3)
    assert after[("D_0.1_cc", "Brainstem")] == pytest.approx(before[("D_0.1_cc", "Brainstem")] + 3.0, abs=1e-3)
    assert after[("mean", "SpinalCord")] == before[("mean", "SpinalCord")]  # not calibrated: untouched


def test_fit_recovers_a_known_metric_error_from_out_of_fold_rows():
    rows = []
    for seed in range(12):
        dose, structures = _phantom(seed)
        reference = dvh_metrics(dose, structures, VOXEL_MM3)
        reference[("D_1", "PTV70")] += 2.5  # the "plan" is hotter than the prediction by a constant
        reference[("mean", "SpinalCord")] -= 1.0
        rows.append((structure_statistics(dose, structures, VOXEL_MM3), reference))
    calibration = DVHCalibration.fit(rows, ridge=1e3)  # a large ridge: only the unpenalised intercept moves
    stats = structure_statistics(*_phantom(99), VOXEL_MM3)
    targets = calibration.targets_for("PTV70", stats["PTV70"])
    assert targets["D_1"] - stats["PTV70"]["D_1"] == pytest.approx(2.5, abs=0.05)
    assert targets["D_99"] - stats["PTV70"]["D_99"] == pytest.approx(0.0, abs=0.05)
    assert calibration.targets_for("SpinalCord", stats["SpinalCord"])["mean"] - stats["SpinalCord"]["mean"] \
        == pytest.approx(-1.0, abs=0.05)
    assert "PTV63" not in calibration.coefficients  # no training case: left as predicted
    assert calibration.cases["PTV70"] == 12
    # few cases: no coefficients
    assert DVHCalibration.fit(rows[:3], ridge=10.0).coefficients == {}


def test_round_trip_and_malformed_configs_are_named():
    dose, structures = _phantom()
    reference = dvh_metrics(dose, structures, VOXEL_MM3)
    rows = [(structure_statistics(_phantom(s)[0], structures, VOXEL_MM3), reference) for s in range(8)]
    calibration = DVHCalibration.fit(rows, ridge=10.0)
    again = DVHCalibration.from_dict(calibration.to_dict())
    np.testing.assert_array_equal(again.apply(dose, structures, VOXEL_MM3), calibration.apply(dose, structures, VOXEL_MM3))
    with pytest.raises(RtgenError, match="run/config.json: dvh_calibration is malformed"):
        DVHCalibration.from_dict({"coefficients": {}}, "run/config.json")
    with pytest.raises(RtgenError, match="unknown structure 'Liver'"):
        DVHCalibration.from_dict({"ridge": 1, "coefficients": {"Liver": {"mean": [0.0]}}})
    with pytest.raises(RtgenError, match="PTV70 D_1 has the wrong shape"):
        DVHCalibration.from_dict({"ridge": 1, "coefficients": {"PTV70": {"D_1": [0.0, 1.0]}}})


def test_the_fit_does_not_depend_on_the_units_of_a_statistic():
    """The ridge shrinks standardised statistics: a statistic on another scale (a share given as a
    percentage, a volume statistic times 1000) gets the same fitted corrections."""
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(40):
        dose, structures = _phantom(int(rng.integers(1000)))
        dose = dose * rng.uniform(0.9, 1.1)
        row = structure_statistics(dose, structures, VOXEL_MM3)
        reference = dvh_metrics(dose, structures, VOXEL_MM3)
        reference[("mean", "SpinalCord")] += 3.0 * row["SpinalCord"]["D_50"] / 60.0
        rows.append((row, reference))
    scale = {"log_cc": 1000.0, "in_targets": 100.0}
    scaled = [({s: {k: v * scale.get(k, 1.0) for k, v in per.items()} for s, per in row.items()}, ref)
              for row, ref in rows]
    a, b = DVHCalibration.fit(rows, ridge=30.0), DVHCalibration.fit(scaled, ridge=30.0)
    for (row, _), (row_b, _) in zip(rows[:5], scaled[:5]):
        for structure in ("SpinalCord", "PTV70"):
            ta, tb = a.targets_for(structure, row[structure]), b.targets_for(structure, row_b[structure])
            for metric in ta:
                assert ta[metric] == pytest.approx(tb[metric], abs=1e-6)


def test_statistics_name_the_overlap_with_the_targets_as_a_share_of_the_organ():
    dose, structures = _phantom()
    structures["Larynx"] = structures["PTV56"] & (np.mgrid[:40, :40, :40][0] < 20)  # half of it inside the PTV56
    structures["Larynx"] |= np.roll(structures["Larynx"], 12, axis=0) & ~structures["PTV56"] & ~structures["PTV70"]
    row = structure_statistics(dose, structures, VOXEL_MM3)
    larynx = structures["Larynx"]
    inside = (larynx & (structures["PTV56"] | structures["PTV70"])).sum()
    assert row["Larynx"]["in_targets"] == pytest.approx(inside / larynx.sum())
    assert 0.0 < row["Larynx"]["in_targets"] < 1.0
    assert row["PTV70"]["log_cc_PTV70"] == pytest.approx(np.log1p(structures["PTV70"].sum() * VOXEL_MM3 / 1000))
    assert row["PTV70"]["log_cc_PTV63"] == 0.0 and row["PTV56"]["log_cc_PTV70"] == row["PTV70"]["log_cc_PTV70"]


def test_a_calibration_saved_before_the_standardised_fit_keeps_its_statistics():
    """A saved calibration without a feature list has the old statistics: six per structure, and the
    organ's overlap with the targets as a share of the grid. It loads, applies, and saves as it was."""
    dose, structures = _phantom()
    old = {"ridge": 10.0, "coefficients": {"Brainstem": {"mean": [0.5, 0, 0, 0, 0, 0, 2000.0],
                                                         "D_0.1_cc": [0.0] * 7},
                                           "PTV70": {m: [0.0] * 7 for m in ("D_99", "D_95", "D_1")}}}
    calibration = DVHCalibration.from_dict(old)
    assert calibration.legacy
    row = structure_statistics(dose, structures, VOXEL_MM3)["Brainstem"]
    expected = row["mean"] + 0.5 + 2000.0 * (structures["Brainstem"] & (structures["PTV56"] | structures["PTV70"])).mean()
    assert calibration.targets_for("Brainstem", row)["mean"] == pytest.approx(expected)
    again = DVHCalibration.from_dict(calibration.to_dict())
    assert again.legacy and again.coefficients == calibration.coefficients
    new = DVHCalibration.fit([(structure_statistics(_phantom(s)[0], structures, VOXEL_MM3),
                               dvh_metrics(dose, structures, VOXEL_MM3)) for s in range(8)])
    assert not DVHCalibration.from_dict(new.to_dict()).legacy
    wrong = {**new.to_dict(), "features": {"targets": ["D_99"], "oars": ["mean"]}}
    with pytest.raises(RtgenError, match="statistics this version of rtgen does not compute"):
        DVHCalibration.from_dict(wrong, "run/config.json")

