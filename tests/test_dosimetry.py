import numpy as np
import pytest
from official_openkbp import official_scores
from scipy import ndimage, stats

from rtgen.data import write_dose_csv
from rtgen.dosimetry import (
    OpenKBPScores,
    compare_paired,
    cumulative_dvh,
    dmax,
    dmean,
    dose_at_volume_cc,
    dose_at_volume_percent,
    dose_score,
    dvh_metrics,
    gamma_pass_rate,
    homogeneity_index,
    paddick_conformity_index,
    structure_mae,
    volume_at_dose_cc,
    volume_at_dose_percent,
)
from rtgen.evaluation import evaluate_folders


def cube(shape=(20, 20, 20), lo=5, hi=15):
    m = np.zeros(shape, bool)
    m[lo:hi, lo:hi, lo:hi] = True
    return m


def test_uniform_dose_in_a_cube():
    mask = cube()
    dose = np.full(mask.shape, 60.0)
    v = dose[mask]
    for x in (1, 2, 50, 95, 98, 99):
        assert dose_at_volume_percent(v, x) == 60.0
    assert dmean(v) == dmax(v) == 60.0
    assert homogeneity_index(dose, mask) == 0.0
    assert volume_at_dose_percent(v, 60.0) == 100.0 and volume_at_dose_percent(v, 60.01) == 0.0
    # 1000 voxels of 2 x 2 x 2.5 mm = 10 mm^3 each -> 10 cc
    assert volume_at_dose_cc(v, 59.0, 10.0) == pytest.approx(10.0)
    x, y = cumulative_dvh(v, bin_width=1.0)
    assert y[x <= 60].min() == 100.0 and y[x > 60].max() == 0.0


def test_linear_ramp_percentiles():
    values = np.arange(1, 1001, dtype=float) / 10  # 0.1 .. 100 Gy
    # D_x% = percentile(100 - x), linear interpolation at rank (100 - x)/100 * 999
    assert dose_at_volume_percent(values, 95) == pytest.approx((1 + 0.05 * 999) / 10)
    assert dose_at_volume_percent(values, 1) == pytest.approx((1 + 0.99 * 999) / 10)
    assert volume_at_dose_percent(values, 90.1) == pytest.approx(10.0)
    hi = homogeneity_index(values.reshape(10, 10, 10), np.ones((10, 10, 10), bool))
    assert hi == pytest.approx((dose_at_volume_percent(values, 2) - dose_at_volume_percent(values, 98)) / np.median(values))


def test_d01cc_with_known_voxel_volume():
    values = np.arange(1, 1001, dtype=float)
    # 1 mm^3 voxels: 0.1 cc = 100 voxels -> percentile 100 - 100/1000*100 = 90 -> 1 + 0.9 * 999
    assert dose_at_volume_cc(values, 0.1, 1.0) == pytest.approx(900.1)
    # 40 mm^3 voxels: round(100/40) = 2 voxels -> percentile 99.8
    assert dose_at_volume_cc(values, 0.1, 40.0) == pytest.approx(1 + 0.998 * 999)
    # voxels larger than 0.1 cc: at least one voxel -> percentile 99.9
    assert dose_at_volume_cc(values, 0.1, 500.0) == pytest.approx(1 + 0.999 * 999)


def test_paddick_ci():
    target = cube()
    assert paddick_conformity_index(np.where(target, 70.0, 0.0), target, 70.0) == 1.0
    # isodose covers the target plus the same volume again outside: CI = TV^2 / (TV * 2 TV) = 0.5
    dose = np.zeros(target.shape)
    dose[5:15, 5:15, 5:15] = 70.0
    dose[5:15, 5:15, 15:20] = 70.0
    dose[5:15, 5:15, 0:5] = 70.0
    assert paddick_conformity_index(dose, target, 70.0) == pytest.approx(0.5)
    # half the target covered, nothing outside: CI = (TV/2)^2 / (TV * TV/2) = 0.5
    half = np.zeros(target.shape)
    half[5:15, 5:15, 5:10] = 70.0
    assert paddick_conformity_index(half, target, 70.0) == pytest.approx(0.5)


def test_structure_mae_and_dose_score():
    mask = cube()
    ref = np.zeros(mask.shape)
    pred = ref + 2.0
    assert structure_mae(ref, pred, mask) == 2.0
    pdm = np.zeros(mask.shape, bool)
    pdm[:10] = True  # half the grid
    assert dose_score(ref, pred, pdm) == pytest.approx(2.0 * pred.size / pdm.sum())


def test_dvh_score_pools_values_not_patients():
    # patient A has one target metric set (3 values), patient B all ten structures (3*3 + 7*2 = 23)
    mask = cube()
    a_structs = {"PTV70": mask}
    b_structs = {n: mask for n in ("PTV56", "PTV63", "PTV70", "Brainstem", "SpinalCord", "RightParotid",
                                   "LeftParotid", "Esophagus", "Larynx", "Mandible")}
    ref = np.where(mask, 60.0, 0.0)
    s = OpenKBPScores()
    s.add("a", ref, ref + 3.0, mask, a_structs, 8.0)  # every metric off by 3
    s.add("b", ref, ref + 1.0, mask, b_structs, 8.0)  # every metric off by 1
    assert s.dvh_score == pytest.approx((3 * 3 + 23 * 1) / (3 + 23))
    assert s.dvh_score != pytest.approx((3 + 1) / 2)


def test_identical_doses_score_zero(patient):
    m = dvh_metrics(patient.dose, patient.structures, patient.voxel_volume_mm3)
    assert len(m) == 3 * 3 + 5 * 2  # pt_204: three targets, five OARs
    s = OpenKBPScores()
    s.add("p", patient.dose, patient.dose, patient.possible_dose_mask, patient.structures, patient.voxel_volume_mm3)
    assert s.dose_score == 0.0 and s.dvh_score == 0.0


def test_matches_independent_official_computation(tmp_path, patients, examples_dir):
    pred_dir = tmp_path / "pred"
    for p in patients:
        pred = ndimage.gaussian_filter(p.dose, 1.2) * 1.03
        write_dose_csv(pred_dir / f"{p.id}.csv", pred)
    ours = evaluate_folders(pred_dir, examples_dir, progress=False)
    official_dose, official_dvh = official_scores(examples_dir, pred_dir)
    assert ours.scores.dose_score > 0.5
    # dose is held as float32 (as issued), the official code float64; 1e-5 Gy is far below print precision
    assert ours.scores.dose_score == pytest.approx(official_dose, abs=1e-5)
    assert ours.scores.dvh_score == pytest.approx(official_dvh, abs=1e-5)


def test_gamma_analytic_cases():
    spacing = (2.0, 2.0, 2.0)
    ref = np.zeros((24, 24, 24))
    ref[6:18, 6:18, 6:18] = 50.0
    ref = ndimage.gaussian_filter(ref, 1.0)
    assert gamma_pass_rate(ref, ref, spacing) == 100.0
    assert gamma_pass_rate(ref, ref * 1.02, spacing) == 100.0  # 2% everywhere < 3% of max
    # +5% of max everywhere in the high-dose plateau: fails dose criterion; DTA cannot rescue a flat region
    flat = np.full((12, 12, 12), 50.0)
    assert gamma_pass_rate(flat, flat + 2.5, spacing) == 0.0
    # a 2 mm shift is within 3 mm DTA everywhere: all pass
    shifted = np.roll(ref, 1, axis=0)
    assert gamma_pass_rate(ref, shifted, spacing) == 100.0
    # a 6 mm shift fails on the steep edges but not in the plateau
    rate = gamma_pass_rate(ref, np.roll(ref, 3, axis=0), spacing)
    assert 20.0 < rate < 95.0


def test_paired_tests_match_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(2.5, 0.3, 30)
    b = a + rng.normal(0.2, 0.1, 30)
    c = compare_paired(a, b)
    assert c.t_pvalue == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert c.wilcoxon_pvalue == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert c.mean_difference == pytest.approx(np.mean(a - b)) and c.t_pvalue < 1e-6
    assert compare_paired(a, a).wilcoxon_pvalue == 1.0
    with pytest.raises(ValueError):
        compare_paired(a, b[:5])
