"""DVH estimate bands: calibrated coverage on fresh cases, widths that follow the difficulty, the metrics
they band, their files, and a dose model that learns them out of fold and writes them on prediction."""

import json
import math

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from rtgen.cli import app
from rtgen.core.errors import RtgenError
from rtgen.dosimetry.bands import (
    Case,
    DVHBands,
    case_coverage,
    cross_validated_coverage,
    from_csv,
    metric_value,
    structure_cases,
    to_csv,
)
from rtgen.dosimetry.dvh import dose_at_volume_cc, dose_at_volume_percent, volume_at_dose_percent

runner = CliRunner()


def _cases(n: int, seed: int) -> list[Case]:
    """Two structures whose errors grow with a difficulty the cases show (feature 3)."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        for structure, metric in (("PTV70", "D_95"), ("Brainstem", "mean")):
            hard = rng.uniform(0.0, 1.0)
            x = np.array([1.0, 0.7, 3.0, hard, 0.2, 0.6])
            cases.append(Case(structure, metric, 50.0, x, 50.0 + rng.normal() * math.exp(0.2 + 1.5 * hard),
                              fold=i % 5, patient=f"pt_{i}"))
    return cases


def test_bands_cover_fresh_cases_at_their_level_and_widen_with_difficulty():
    bands = DVHBands.fit(_cases(400, 1))
    fresh = _cases(3000, 2)
    got = case_coverage(bands, fresh)
    assert 0.76 <= got["80"]["coverage"] <= 0.84 and 0.93 <= got["95"]["coverage"] <= 0.97
    assert got["80"]["cases"] == 6000 and math.isnan(got["80"]["coverage_pct"])
    widths = [hi - lo for c in fresh[:400] for lo, hi in bands.interval(c)[:1]]
    hard = [c.features[3] for c in fresh[:400]]
    rank = np.corrcoef(np.argsort(np.argsort(widths)), np.argsort(np.argsort(hard)))[0, 1]
    assert rank > 0.95  # the band follows the case's difficulty, not one width for all
    cv = cross_validated_coverage(_cases(400, 1))
    assert 0.75 <= cv["80"]["coverage"] <= 0.85 and cv["95"]["coverage"] >= 0.92


def test_too_few_cases_give_no_band_and_the_bands_round_trip_through_json():
    bands = DVHBands.fit(_cases(400, 1)[:30])  # 15 per structure: fewer than the minimum
    assert bands.quantiles == {} and bands.table(_cases(5, 3)) == []
    bands = DVHBands.fit(_cases(100, 1))
    again = DVHBands.from_dict(json.loads(json.dumps(bands.to_dict(), allow_nan=False)))
    assert again == bands
    with pytest.raises(RtgenError, match="run.json: dvh_bands is malformed"):
        DVHBands.from_dict({"levels": [0.8]}, "run.json")
    with pytest.raises(RtgenError, match="levels must lie between 0 and 1"):
        DVHBands.from_dict({**bands.to_dict(), "levels": [80, 95]}, "run.json")


def test_structure_cases_are_the_dvh_metrics_of_the_dose(patient):
    dose, v = patient.dose, patient.voxel_volume_mm3
    cases = structure_cases(dose * 0.97, patient.structures, v, reference=dose)
    by = {(c.structure, c.metric): c for c in cases}
    ptv = dose[patient.structures["PTV70"]]
    assert by[("PTV70", "D_95")].reference == dose_at_volume_percent(ptv, 95.0)
    assert by[("PTV70", "D_50")].predicted == pytest.approx(dose_at_volume_percent(ptv * 0.97, 50.0), rel=1e-6)
    cord = dose[patient.structures["SpinalCord"]]
    assert by[("SpinalCord", "D_0.1_cc")].reference == dose_at_volume_cc(cord, 0.1, v)
    assert by[("SpinalCord", "V_20Gy")].reference == pytest.approx(volume_at_dose_percent(cord, 20.0))
    assert all(0 < c.predicted < 100 for c in cases if c.metric.startswith("V_"))  # flat curve points: no rows
    assert ("PTV70", "V_5Gy") not in by  # the whole PTV gets 5 Gy
    for c in cases:
        assert metric_value(dose[patient.structures[c.structure]], c.metric, v) == pytest.approx(c.reference)
    with pytest.raises(RtgenError, match="not a DVH metric"):
        metric_value(cord, "Dmax", v)


def test_the_dvh_estimate_file_round_trips_and_a_bad_one_is_named():
    bands = DVHBands.fit(_cases(100, 1))
    rows = bands.table(_cases(3, 5))
    assert list(rows[0]) == ["structure", "metric", "unit", "predicted", "lower_80", "upper_80", "lower_95",
                             "upper_95", "wide"]
    back = from_csv(to_csv(rows), "pt_1_dvh.csv")
    assert [r["structure"] for r in back] == [r["structure"] for r in rows]
    for a, b in zip(back, rows):
        assert a["lower_95"] == b["lower_95"] and a["wide"] == b["wide"]
        assert a["lower_95"] <= a["lower_80"] <= a["predicted"] <= a["upper_80"] <= a["upper_95"]
    with pytest.raises(RtgenError, match="pt_1_dvh.csv: not a DVH estimate"):
        from_csv("a,b\n1,2\n", "pt_1_dvh.csv")
    with pytest.raises(RtgenError, match="line 2 holds a value that is not a number"):
        from_csv(to_csv(rows).replace(str(rows[0]["upper_80"]), "high", 1), "pt_1_dvh.csv")


@pytest.fixture(scope="module")
def banded_run(tmp_path_factory, examples_dir):
    """A model refitted with 4 folds on 8 patients (the two example patients, four times each): enough
    out-of-fold cases for bands at 50 and 80 %."""
    root = tmp_path_factory.mktemp("banded")
    split = root / "split"
    split.mkdir()
    for i in range(8):
        (split / f"pt_{300 + i}").symlink_to(examples_dir / ("pt_204" if i % 2 else "pt_219"))
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "lightgbm_dose", "n_estimators": 15, "num_leaves": 15, "min_data_in_leaf": 20},
        "voxels": {"beams": False, "samples_per_patient": 1000},
        "data": {"train": str(split), "refit": True, "cache": str(root / "cache"), "feature_workers": 1},
        "calibration": {"folds": 4, "min_cases": 2, "band_levels": [0.5, 0.8]},
        "train": {"seed": 0}}))
    r = runner.invoke(app, ["train", str(config), "--out", str(root / "run")])
    assert r.exit_code == 0, r.output
    return root / "run"


def test_a_refit_scores_by_cross_validation_and_learns_bands(banded_run):
    cfg = json.loads((banded_run / "config.json").read_text())
    assert cfg["training"]["train_patients"] == 8 and cfg["training"]["refit"] is True
    v = cfg["validation"]
    assert v["cv_folds"] == 4 and v["cv_patients"] == 8 and v["dose_score"] == v["cv_dose_score"] > 0
    assert set(v["cv_band_coverage"]) == {"50", "80"} and v["cv_band_coverage"]["80"]["cases"] > 0
    assert "PTV70/D_95" in cfg["dvh_bands"]["quantiles"] and cfg["ensemble_members"] == 4
    card = (banded_run / "MODEL_CARD.md").read_text()
    assert "cross-validat" in card and "band" in card


def test_predict_writes_the_spread_and_the_dvh_estimate(banded_run, examples_dir, tmp_path):
    out = tmp_path / "pred"
    r = runner.invoke(app, ["predict", "--model", str(banded_run), "--patients", str(examples_dir / "pt_204"),
                            "--out", str(out), "--format", "nifti"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "pt_204.nii.gz", "pt_204_dvh.csv",
                                                     "pt_204_std.nii.gz"]
    rows = from_csv((out / "pt_204_dvh.csv").read_text(), "pt_204_dvh.csv")
    assert {("PTV70", "D_99"), ("SpinalCord", "mean")} <= {(r["structure"], r["metric"]) for r in rows}
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["band_levels"] == [0.5, 0.8] and len(summary["patients"]["pt_204"]["dvh_estimate"]) == len(rows)
    import nibabel as nib

    std = np.asarray(nib.load(str(out / "pt_204_std.nii.gz")).dataobj)
    assert std.max() > 0 and std.min() >= 0
