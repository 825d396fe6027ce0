"""The clinical scorecard, its reward, eq. (10)'s optimality probability, the GDP-HMM MAE and
`rtgen evaluate --scorecard`. Every expected number is computed by hand in the comments."""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from rtgen.cli import app
from rtgen.core.errors import DataError, RtgenError, ValueRangeError
from rtgen.dosimetry.gdp_hmm import MaskError, gdp_hmm_mae
from rtgen.dosimetry.scorecard import (
    DEFAULT_HN_SIB,
    Criterion,
    Scorecard,
    ScorecardError,
    optimality_probability,
    reward,
    reward_terms,
)

VOXEL_MM3 = 10.0  # 2 x 2 x 2.5 mm: 0.03 cc = 30 mm^3 = round(3.0) = 3 voxels (OpenKBP's Dcc rule)


def phantom(brainstem_hot: float = 56.0):
    """10^3 grid, dose 0 outside the structures.

    PTV70: the 4^3 = 64-voxel cube [2:6]^3 holding 2 voxels at 60 Gy, 58 at 69.3 Gy, 4 at 76 Gy.
    Brainstem: the 2^3 = 8-voxel cube [7:9]^3, 4 voxels at 40 Gy and 4 at `brainstem_hot`.
    LeftParotid: 8 voxels [0:2, 7:9, 7:9], 4 at 20 Gy and 4 at 26 Gy (mean 23 Gy).
    No PTV63, PTV56, SpinalCord, RightParotid, Mandible, Larynx, Esophagus."""
    dose = np.zeros((10, 10, 10))  # float64: 69.3 Gy is not exactly a float32
    s = {name: np.zeros(dose.shape, bool) for name in ("PTV70", "Brainstem", "LeftParotid")}
    s["PTV70"][2:6, 2:6, 2:6] = True
    s["Brainstem"][7:9, 7:9, 7:9] = True
    s["LeftParotid"][0:2, 7:9, 7:9] = True
    ptv = np.full(64, 69.3)
    ptv[:2], ptv[-4:] = 60.0, 76.0
    dose[s["PTV70"]] = ptv
    dose[s["Brainstem"]] = [40.0] * 4 + [brainstem_hot] * 4
    dose[s["LeftParotid"]] = [20.0] * 4 + [26.0] * 4
    return dose, s


@pytest.fixture(scope="module")
def card():
    return Scorecard.default_hn_sib()


def rows(result):
    return {(r.structure, r.metric): r for r in result.rows}


def test_each_criterion_type_by_hand(card):
    dose, s = phantom()
    res = card.evaluate(dose, s, VOXEL_MM3)
    r = rows(res)
    # DoseAtVolume, %: D95 = 5th percentile, index 63 * 0.05 = 3.15 among sorted values -> 69.3 Gy;
    # points on (66.5 -> 0, 70 -> 10): 10 * (69.3 - 66.5) / 3.5 = 8.0
    assert r["PTV70", "D95%"].value == pytest.approx(69.3)
    assert r["PTV70", "D95%"].points == pytest.approx(8.0)
    # D99 = 1st percentile, index 0.63 between the two 60 Gy voxels -> 60 Gy;
    # points on (59.5 -> 0, 65.1 -> 5): 5 * 0.5 / 5.6 = 0.446428...
    assert r["PTV70", "D99%"].value == pytest.approx(60.0)
    assert r["PTV70", "D99%"].points == pytest.approx(5 * 0.5 / 5.6)
    # DoseAtVolume, cc: 3 hottest voxels -> percentile 100 - 3/64*100 = 95.3125, index 63 * 0.953125 = 60.05,
    # between sorted values 60 and 61, both 76 Gy -> 76 Gy; points on (73.5 -> 10, 74.9 -> 8, 80.5 -> 0):
    # 8 - 8 * (76 - 74.9) / 5.6 = 6.428571...
    assert r["PTV70", "D0.03cc"].value == pytest.approx(76.0)
    assert r["PTV70", "D0.03cc"].points == pytest.approx(8 - 8 * 1.1 / 5.6)
    # VolumeAtDose: 4 of 64 voxels >= 74.9 Gy = 6.25 %; points on (5 -> 5, 20 -> 0): 5 - 5 * 1.25 / 15
    assert r["PTV70", "V74.9Gy"].value == pytest.approx(6.25)
    assert r["PTV70", "V74.9Gy"].points == pytest.approx(5 - 5 * 1.25 / 15)
    # Brainstem D0.03cc: percentile 100 - 3/8*100 = 62.5, index 7 * 0.625 = 4.375 -> 56 Gy;
    # points on (45 -> 10, 54 -> 6, 60 -> 0): 6 - 6 * 2 / 6 = 4; hard limit 54: hinge 2 / (60 - 45)
    bs = r["Brainstem", "D0.03cc"]
    assert (bs.value, bs.points, bs.max_points) == (pytest.approx(56.0), pytest.approx(4.0), 10.0)
    assert bs.hard and bs.violation == pytest.approx(2 / 15)
    # MeanDose: (4 * 20 + 4 * 26) / 8 = 23 Gy; points on (20 -> 10, 26 -> 6, 35 -> 0): 10 - 4 * 3 / 6 = 8
    assert r["LeftParotid", "Mean"].value == pytest.approx(23.0)
    assert r["LeftParotid", "Mean"].points == pytest.approx(8.0)
    # total 8 + 0.446429 + 6.428571 + 4.583333 + 4 + 8 = 31.458333 of an achievable 10+5+10+5+10+10 = 50
    assert res.total == pytest.approx(31.458333, abs=1e-5)
    assert res.max_total == 50.0 and res.template_max == 112.0
    assert res.fraction == pytest.approx(31.458333 / 50, abs=1e-6)
    # eq. (9) normalised: weights 2,1,1,1 (PTV70), 2 (Brainstem), 1 (LeftParotid), sum 8:
    # (2*0.8 + 0.0892857 + 0.6428571 + 0.9166667 + 2*0.4 + 0.8) / 8 = 4.8488095 / 8 = 0.6061012
    assert res.weighted_score == pytest.approx(4.8488095 / 8, abs=1e-6)
    assert res.hard_violation == pytest.approx(2 / 15)  # PTV70 D95 69.3 >= 66.5: no hinge there
    # reward = 0.6061012 - 1.0 * 2/15 = 0.4727679 (no reference: no MAE anchor)
    assert reward(dose, s, VOXEL_MM3) == pytest.approx(4.8488095 / 8 - 2 / 15, abs=1e-6)
    assert reward(dose, s, VOXEL_MM3, hard_penalty=0.0) == pytest.approx(res.weighted_score)


def test_scores_clamp_outside_the_breakpoints(card):
    dose, s = phantom(brainstem_hot=30.0)  # Brainstem D0.03cc 40 Gy < 45: the flat full-points end
    assert rows(card.evaluate(dose, s, VOXEL_MM3))["Brainstem", "D0.03cc"].points == 10.0
    dose, s = phantom(brainstem_hot=70.0)  # 70 > 60: no points, never negative; hinge (70-54)/15
    r = rows(card.evaluate(dose, s, VOXEL_MM3))["Brainstem", "D0.03cc"]
    assert r.points == 0.0 and r.violation == pytest.approx(16 / 15)


def test_absent_structures_are_skipped_and_reported(card):
    dose, s = phantom()
    s["SpinalCord"] = np.zeros(dose.shape, bool)  # an empty mask counts as absent
    res = card.evaluate(dose, s, VOXEL_MM3)
    absent = {r.structure for r in res.rows if r.status == "absent"}
    assert absent == {"PTV63", "PTV56", "SpinalCord", "RightParotid", "Mandible", "Larynx", "Esophagus"}
    assert set(res.absent) == absent
    assert all(r.value is None and r.points is None for r in res.rows if r.status == "absent")
    assert res.max_total == 50.0  # only the 6 scored criteria count
    # a patient who gains a PTV63 gains its two criteria (8 + 4 points) in the achievable maximum
    s["PTV63"] = np.zeros(dose.shape, bool)
    s["PTV63"][0:2, 0:2, 0:2] = True
    dose[s["PTV63"]] = 63.0  # D95 = D99 = 63 Gy: full points, 8 and 4
    res63 = card.evaluate(dose, s, VOXEL_MM3)
    assert res63.max_total == 62.0 and res63.total == pytest.approx(res.total + 12.0)
    with pytest.raises(ScorecardError, match="none of the structures"):
        card.evaluate(dose, {"Body": s["PTV70"]}, VOXEL_MM3)


def test_prescription_rescaling(card):
    dose, s = phantom()
    base = rows(card.evaluate(dose, s, VOXEL_MM3))
    # the same plan for a 66 Gy high-dose target: PTV70 thresholds scale by 66/70
    r = rows(card.evaluate(dose, s, VOXEL_MM3, prescriptions={"PTV70": 66.0}))
    assert r["PTV70", "D95%"].scale == pytest.approx(66 / 70)
    assert r["PTV70", "D95%"].limit == pytest.approx(66.5 * 66 / 70)  # 62.7 Gy
    # D95 69.3 >= 66 (the scaled full-points dose): 10 of 10
    assert r["PTV70", "D95%"].points == pytest.approx(10.0)
    # D99 60 Gy on (0.85 * 66 = 56.1 -> 0, 0.93 * 66 = 61.38 -> 5): 5 * 3.9 / 5.28 = 3.693182
    assert r["PTV70", "D99%"].points == pytest.approx(5 * 3.9 / 5.28)
    # V74.9Gy's level becomes 74.9 * 66/70 = 70.62 Gy; still only the 4 hot voxels: 6.25 %
    assert r["PTV70", "V74.9Gy"].value == pytest.approx(6.25)
    # OARs do not scale
    assert r["Brainstem", "D0.03cc"].points == base["Brainstem", "D0.03cc"].points
    assert r["Brainstem", "D0.03cc"].scale == 1.0
    # invariance: a whole plan scaled by 66/70 scores on a 66 Gy prescription what it scored on 70 Gy
    scaled = dose.copy()
    scaled[s["PTV70"]] *= 66 / 70
    r66 = rows(card.evaluate(scaled, s, VOXEL_MM3, prescriptions={"PTV70": 66.0}))
    for key in (("PTV70", "D95%"), ("PTV70", "D99%"), ("PTV70", "D0.03cc"), ("PTV70", "V74.9Gy")):
        assert r66[key].points == pytest.approx(base[key].points, abs=1e-4), key
    # the template's own prescription changes nothing
    assert card.evaluate(dose, s, VOXEL_MM3, {"PTV70": 70.0}).total == pytest.approx(
        card.evaluate(dose, s, VOXEL_MM3).total)
    with pytest.raises(ScorecardError, match="PTV66"):
        card.evaluate(dose, s, VOXEL_MM3, prescriptions={"PTV66": 66.0})
    with pytest.raises(ScorecardError, match="prescription of PTV70"):
        card.evaluate(dose, s, VOXEL_MM3, prescriptions={"PTV70": -1.0})


def test_reward_orders_plans_and_anchors(card):
    worse, s = phantom(brainstem_hot=56.0)
    better, _ = phantom(brainstem_hot=50.0)  # brainstem D0.03cc 50 Gy: 10 - 4 * 5/9 points, no hinge
    r_worse, r_better = reward(worse, s, VOXEL_MM3), reward(better, s, VOXEL_MM3)
    assert r_better > r_worse
    # the better plan: brainstem points 10 - 4 * 5/9 = 7.777778, score (4.8488095 - 0.8 + 2*0.7777778)/8
    assert r_better == pytest.approx((4.8488095 - 0.8 + 2 * 0.7777778) / 8, abs=1e-6)
    # MAE anchor: against itself the MAE is 0 (the reward is unchanged); against another plan it costs
    # mae_weight * MAE / 70 Gy (the PTV70 prescription): only the 4 brainstem voxels differ, by 6 Gy each,
    # and all 80 structure voxels are > 5 Gy in one dose or the other -> MAE = 24 / 80 = 0.3 Gy
    assert reward(better, s, VOXEL_MM3, reference=better) == pytest.approx(r_better)
    t = reward_terms(better, s, VOXEL_MM3, reference=worse, mae_weight=2.0)
    assert t.mae_gy == pytest.approx(0.3) and t.mae_scale_gy == 70.0
    assert t.value == pytest.approx(r_better - 2.0 * 0.3 / 70)
    # the hinge: a much colder PTV70 (D95 60 Gy, below the 66.5 Gy hard limit) is penalised beyond 0 points:
    # (66.5 - 60) / (70 - 66.5) = 1.857143 per unit hard_penalty
    cold = better.copy()
    cold[s["PTV70"]] = 60.0
    tc = reward_terms(cold, s, VOXEL_MM3)
    assert tc.hinge == pytest.approx(6.5 / 3.5)
    assert reward(cold, s, VOXEL_MM3) < reward(cold, s, VOXEL_MM3, hard_penalty=0.0) < r_better
    res = card.evaluate(better, s, VOXEL_MM3)  # a precomputed result is reused
    assert reward(better, s, VOXEL_MM3, result=res) == pytest.approx(r_better)


def test_optimality_probability():
    # eq. (10): 0.5 + 0.5 * (r - mean) / dispersion, clipped; mean of (0.4, 0.5, 0.6) is 0.5
    assert optimality_probability([0.4, 0.5, 0.6], 0.1) == pytest.approx([0.0, 0.5, 1.0])
    assert optimality_probability([0.4, 0.5, 0.6], 0.2) == pytest.approx([0.25, 0.5, 0.75])
    # mean 0.45; (0 - 0.45)/0.1 -> 0.5 - 2.25 clipped to 0, (0.9 - 0.45)/0.1 -> clipped to 1
    assert optimality_probability([0.0, 0.9], 0.1) == pytest.approx([0.0, 1.0])
    # no dispersion: the candidates' own standard deviation (0.1 for 0.4, 0.6) -> 0.5 -+ 0.5
    assert optimality_probability([0.4, 0.6]) == pytest.approx([0.0, 1.0])
    assert optimality_probability([0.7, 0.7, 0.7]) == pytest.approx([0.5] * 3)
    with pytest.raises(ScorecardError, match="dispersion"):
        optimality_probability([0.1, 0.2], 0.0)
    with pytest.raises(ScorecardError, match="1-D"):
        optimality_probability([])
    with pytest.raises(ScorecardError, match="finite"):
        optimality_probability([0.1, float("nan")])


def test_gdp_hmm_mae_by_hand():
    ref = np.array([10, 4, 0, 6, 5, 0, 20, 2], float).reshape(2, 2, 2)
    pred = np.array([8, 6, 1, 4, 3, 7, 0, 0], float).reshape(2, 2, 2)
    body = np.ones((2, 2, 2), bool)
    body.flat[6] = False  # voxel 6 (20 vs 0 Gy) lies outside the body: not scored
    # selected (either > 5 Gy, strictly): v0 (10|8), v1 (pred 6), v3 (ref 6), v5 (pred 7);
    # not v2 (0|1), v4 (ref exactly 5 is not > 5), v7 (2|0). |errors| 2, 2, 2, 7 -> 13 / 4
    assert gdp_hmm_mae(ref, pred, body) == pytest.approx(3.25)
    # with voxel 6 in the body: (13 + 20) / 5
    assert gdp_hmm_mae(ref, pred) == pytest.approx(33 / 5)
    # threshold 1 Gy: add v7 (2|0, error 2) and v4 (5|3, error 2); v2 (0|1) is still not > 1
    assert gdp_hmm_mae(ref, pred, body, threshold_gy=1.0) == pytest.approx(17 / 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # empty selection: 0.0, quietly
        assert gdp_hmm_mae(np.full((2, 2), 3.0), np.full((2, 2), 4.0)) == 0.0
    with pytest.raises(MaskError, match="body mask is empty"):
        gdp_hmm_mae(ref, pred, np.zeros((2, 2, 2), bool))
    with pytest.raises(MaskError, match="body mask shape"):
        gdp_hmm_mae(ref, pred, np.ones((2, 2), bool))
    with pytest.raises(ValueRangeError, match="negative"):
        gdp_hmm_mae(-ref, pred)
    with pytest.raises(ValueRangeError, match="threshold"):
        gdp_hmm_mae(ref, pred, threshold_gy=float("nan"))


def test_bad_input_is_named(card):
    dose, s = phantom()
    bp = [[45, 10], [54, 0]]
    with pytest.raises(ScorecardError, match="unknown criterion type 'MaxDose'"):
        Criterion("Brainstem", "MaxDose", bp)
    with pytest.raises(ScorecardError, match="strictly increase"):
        Criterion("Brainstem", "MeanDose", [[54, 0], [45, 10]])
    with pytest.raises(ScorecardError, match="non-monotone"):
        Criterion("Brainstem", "MeanDose", [[40, 0], [45, 10], [54, 0]])
    with pytest.raises(ScorecardError, match="needs a volume"):
        Criterion("PTV70", "DoseAtVolume", bp)
    with pytest.raises(ScorecardError, match="needs a limit"):
        Criterion("Brainstem", "MeanDose", bp, hard=True)
    with pytest.raises(ScorecardError, match="unknown keys"):
        Scorecard.from_dict({"criteria": [{"structure": "Brainstem", "type": "MeanDose", "breakpoints": bp,
                                           "wieght": 2}]})
    with pytest.raises(ValueRangeError, match="negative dose"):
        card.evaluate(-dose - 1, s, VOXEL_MM3)
    with pytest.raises(ScorecardError, match="structure PTV70: mask shape"):
        card.evaluate(dose, {**s, "PTV70": np.ones((5, 5, 5), bool)}, VOXEL_MM3)
    with pytest.raises(ScorecardError, match="voxel volume"):
        card.evaluate(dose, s, 0.0)
    assert issubclass(ScorecardError, RtgenError) and issubclass(ScorecardError, ValueError)


def test_json_round_trip_and_bad_file(card, tmp_path):
    assert Scorecard.from_dict(card.to_dict()) == card
    assert Scorecard.from_dict(json.loads(json.dumps(DEFAULT_HN_SIB))) == card
    card.to_json(tmp_path / "card.json")
    assert Scorecard.from_json(tmp_path / "card.json") == card
    (tmp_path / "bad.json").write_text('{"criteria": [{"structure": "X", "type": "Max", "breakpoints": [[0, 1], [1, 0]]}]}')
    with pytest.raises(DataError, match="bad.json: .*unknown criterion type 'Max'"):
        Scorecard.from_json(tmp_path / "bad.json")


def test_fast_on_a_128_cube(card):
    rng = np.random.default_rng(0)
    dose = rng.uniform(0, 75, (128, 128, 128)).astype(np.float32)
    s = {}
    for i, name in enumerate(("PTV56", "PTV63", "PTV70", "Brainstem", "SpinalCord", "RightParotid", "LeftParotid",
                              "Esophagus", "Larynx", "Mandible")):
        m = np.zeros(dose.shape, bool)
        m[10 * i:10 * i + 30, 20:90, 30:100] = True  # up to ~150 000 voxels each, overlapping like PTVs do
        s[name] = m
    best = min(_timed(lambda: card.evaluate(dose, s, 38.6)) for _ in range(3))
    assert best < 0.5, f"{best:.3f} s"


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_cli_scorecard(tmp_path, examples_dir, card):
    from rtgen.data import read_patient, write_dose_csv
    from rtgen.evaluation.dose import read_prediction

    pred = tmp_path / "pred"
    rng = np.random.default_rng(1)
    patients = {}
    for pid in ("pt_204", "pt_219"):
        p = read_patient(examples_dir / pid, load_ct=False)
        noisy = np.clip(p.dose * 0.97 + rng.normal(0, 0.3, p.dose.shape) * (p.dose > 0), 0, None).astype(np.float32)
        write_dose_csv(pred / f"{pid}.csv", noisy)
        patients[pid] = p
    r = CliRunner().invoke(app, ["evaluate", "--pred", str(pred), "--ref", str(examples_dir), "--out",
                                 str(tmp_path / "ev"), "--scorecard"])
    assert r.exit_code == 0, r.output
    assert "pt_204: scorecard" in r.output and "D95%" in r.output and "GDP-HMM MAE" in r.output
    assert "absent" in r.output  # pt_204 has no Mandible or Esophagus, pt_219 no Larynx or Esophagus
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert 0 < m["gdp_hmm_mae"] < 5
    per = m["scorecard"]["per_patient"]
    assert set(per) == {"pt_204", "pt_219"} and set(per["pt_204"]["absent_structures"]) == {"Esophagus", "Mandible"}
    header, *lines = (tmp_path / "ev" / "per_patient.csv").read_text().splitlines()
    cols = header.split(",")
    assert {"gdp_hmm_mae", "scorecard_total", "scorecard_fraction", "scorecard_total_ref"} <= set(cols)
    for line in lines:
        row = dict(zip(cols, line.split(",")))
        p = patients[row["patient"]]
        # the totals agree with a direct call on the prediction as read back
        direct = card.evaluate(read_prediction(pred / f"{p.id}.csv"), p.structures, p.voxel_volume_mm3)
        assert float(row["scorecard_total"]) == pytest.approx(direct.total, abs=1e-6)
        assert float(row["scorecard_total_ref"]) == pytest.approx(card.evaluate(p.dose, p.structures,
                                                                               p.voxel_volume_mm3).total, abs=1e-6)
        assert float(row["scorecard_total"]) < float(row["scorecard_total_ref"])  # a 3 % colder plan loses coverage
        assert float(row["gdp_hmm_mae"]) == pytest.approx(  # the possible dose mask stands for the body
            gdp_hmm_mae(p.dose, read_prediction(pred / f"{p.id}.csv"), p.possible_dose_mask))
    # a bad template is one clear line, before any patient is read
    (tmp_path / "t.json").write_text("{not json")
    r = CliRunner().invoke(app, ["evaluate", "--pred", str(pred), "--ref", str(examples_dir),
                                 "--scorecard-template", str(tmp_path / "t.json")])
    assert r.exit_code == 1 and "t.json, line 1: not valid JSON" in r.output and "Traceback" not in r.output
