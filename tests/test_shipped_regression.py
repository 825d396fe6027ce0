"""The shipped checkpoints predict what they predicted before the package was restructured.

Reference numbers: pt_204 predicted by commit a12dc56 (before the move to core/tasks/engine/hub),
CPU, pure-PyTorch SSM kernels; MD-Dose with DPM-Solver++, 10 steps, one sample, seed 0. The issue
allows 1e-4 Gy per voxel.
"""

import numpy as np
import pytest

from rtgen.data import read_patient
from rtgen.data.examples import example_patients_dir
from rtgen.hub import shipped_model_dir
from rtgen.inference import load_predictor
from rtgen.ssm import use_backend
from rtgen.tasks.dose_base import SamplingConfig

REFERENCE = {
    "mamba_unet_v2": (1527912.3494467735, 71.76305389404297,
                      {646955: 1.08311, 828335: 6.9838, 940605: 47.7631, 1023662: 17.71266, 1091633: 9.20851,
                       1172045: 29.88261, 1253558: 16.70362, 1467180: 1.44471}),
    "md_dose": (1694148.488755703, 77.22306060791016,
                {646955: 1.96751, 828232: 55.69583, 940715: 2.47001, 1023665: 61.28393, 1091518: 45.60152,
                 1171909: 27.21759, 1253330: 21.01089, 1467180: 1.08968}),
}


@pytest.mark.parametrize("model", sorted(REFERENCE))
def test_shipped_model_predicts_as_before_the_restructure(model):
    patient = read_patient(example_patients_dir() / "pt_204")
    with use_backend("torch"):
        dose = load_predictor(shipped_model_dir(model), "cpu").predict(patient, sampling=SamplingConfig("dpmpp", 10, 1, 0))
    total, peak, voxels = REFERENCE[model]
    flat = dose.astype(np.float64).ravel()
    assert flat.sum() == pytest.approx(total, rel=1e-6) and flat.max() == pytest.approx(peak, abs=1e-4)
    for index, gy in voxels.items():
        assert flat[index] == pytest.approx(gy, abs=1e-4), index


def test_shipped_default_dose_model_predicts_as_when_it_was_shipped():
    """The default model (6 LightGBM boosters on 65 features refit on 202 patients, DVH-calibrated, with bands) on
    pt_204, as measured when it was shipped (2026-12-07): the dose, the boosters' spread and the first
    row of its DVH estimate. Trees sum their leaves exactly, so only the features' floating point can
    move them (1e-3 Gy)."""
    patient = read_patient(example_patients_dir() / "pt_204")
    predictor = load_predictor(shipped_model_dir("dose"), "cpu")
    assert predictor.source.parent.name == "lightgbm_dose_openkbp_all"
    dose, std = predictor.predict_with_uncertainty(patient)
    assert not dose[~patient.possible_dose_mask].any() and not std[~patient.possible_dose_mask].any()
    flat = dose.astype(np.float64).ravel()
    assert flat.sum() == pytest.approx(1567976.3448, rel=1e-5) and flat.max() == pytest.approx(74.6551, abs=1e-3)
    for index, gy in {646955: 4.02325, 828335: 11.67267, 940605: 51.35199, 1023662: 32.3975, 1091633: 6.82649,
                      1172045: 23.63893, 1253558: 15.47638, 1467180: 2.6259}.items():
        assert flat[index] == pytest.approx(gy, abs=1e-3), index
    assert float(std.astype(np.float64).sum()) == pytest.approx(41116.22, rel=1e-4)
    row = predictor.task.dvh_estimate(patient, dose)[0]
    assert (row["structure"], row["metric"], row["unit"]) == ("PTV56", "D_99", "Gy")
    for key, gy in {"predicted": 50.752, "lower_80": 47.848, "upper_80": 53.655, "lower_95": 45.448,
                    "upper_95": 56.056}.items():
        assert row[key] == pytest.approx(gy, abs=2e-3), key


def test_shipped_training_split_dose_model_predicts_as_when_it_was_shipped():
    """`hub:lightgbm_dose_openkbp` (4 LightGBM boosters on geometry features, DVH-calibrated, fitted on
    the training patients; DiffKT3D's prior) on pt_204, as measured when it was shipped (2026-11-26).
    Since 2026-12-07 no dose is left outside the possible dose mask (the DVH calibration's organ maps
    had put up to 0.9 Gy there on pt_204, 309.6 Gy summed): the sum is the shipped one less that."""
    patient = read_patient(example_patients_dir() / "pt_204")
    dose = load_predictor(shipped_model_dir("lightgbm_dose_openkbp"), "cpu").predict(patient).astype(np.float64)
    assert not dose[~patient.possible_dose_mask].any()
    dose = dose.ravel()
    assert dose.sum() == pytest.approx(1564512.8016720861, rel=1e-5) and dose.max() == pytest.approx(75.4829, abs=1e-3)
    for index, gy in {646955: 4.19766, 828335: 12.62465, 940605: 51.34431, 1023662: 37.17415, 1091633: 9.97481,
                      1172045: 21.95616, 1253558: 14.18707, 1467180: 2.66581}.items():
        assert dose[index] == pytest.approx(gy, abs=1e-3), index


@pytest.mark.slow  # over 9 s: `pytest -m slow` runs it (CONTRIBUTING.md)
def test_shipped_diffkt3d_predicts_a_dose_near_its_prior_and_the_plan():
    """The shipped DiffKT3D writes its dose as a change to the shipped lightgbm prior (prior + D(z) -
    D(z_prior)). On pt_204, with 2 Euler steps and the best of 2: a dose inside the possible dose
    mask, within 1.5 Gy of the prior on average inside it, and a dose score against the plan within
    25 % of the prior's."""
    from rtgen.data.transforms.modalities import Crop, unit_to_dose
    from rtgen.dosimetry import OpenKBPScores
    from rtgen.tasks.diffkt3d import KT3DSamplingConfig

    patient = read_patient(example_patients_dir() / "pt_204")
    mask = patient.possible_dose_mask
    predictor = load_predictor(shipped_model_dir("diffkt3d"), "cpu")
    task = predictor.task
    case = task.predict_case(patient)  # runs the shipped lightgbm prior once, as `rtgen predict` does
    vol, rewards = task.generate(predictor.model, case, "dose", KT3DSamplingConfig("euler", 2, 2, 0))
    assert len(rewards) == 2  # two candidates, the one with the better scorecard kept
    dose = task.case_dose(case, vol)
    crop = Crop(int(case["crop"][0]), int(case["crop"][1]))
    prior = crop.put(unit_to_dose(case["prior"]), patient.grid) * mask
    assert dose.shape == mask.shape and dose.min() >= 0 and (dose[~mask] == 0).all()
    assert np.abs(dose - prior)[mask].mean() < 1.5
    scores = {}
    for name, d in (("prior", prior), ("diffkt3d", dose)):
        s = OpenKBPScores()
        s.add(patient.id, patient.dose, d * mask, mask, patient.structures, patient.voxel_volume_mm3)
        scores[name] = s.dose_score
    assert scores["diffkt3d"] < 1.25 * scores["prior"], scores


def test_shipped_diffma_synthesises_a_real_patients_mr_as_when_it_was_shipped():
    """The shipped CT -> MR model (DiffMa refining a flip-averaged UNet) on 12 slices of a real
    validation patient it never saw (tests/data/sts_018): an MR in [0, 1] on the CT grid, scored
    against the real MR as measured when its refiner was last replaced (2026-11-27, the best of 3
    seeds, sampling from t = 30: SSIM 43.2 %, PSNR 16.34 dB; the refiner before it 41.3 %, 16.00 dB;
    its base alone 44.1 %, 16.39 dB, which is `hub:unet_sts`), and a change to that base, not a copy of
    it. Its TAEF2 runs in bfloat16 where the CPU has it natively, else in float32 (the two agree to 0.03
    points)."""
    from pathlib import Path

    from rtgen.data.sources.image_pairs import load_pair
    from rtgen.data.transforms.image_slices import slices_to_volume, volume_to_slices
    from rtgen.tasks.image_base import score_volume

    pred = load_predictor(shipped_model_dir("image_synthesis"), "cpu")
    pair = load_pair(Path(__file__).parent / "data" / "sts_018")
    vol = pred.task.predict_pair(pred.model, pair, "cpu", 32)
    assert vol.shape == pair.ct.shape and np.isfinite(vol).all() and 0 <= vol.min() and vol.max() <= 1
    scores = score_volume(vol, pair)
    assert pred.task.diffusion.start_strength == 0.03
    assert scores["ssim"] == pytest.approx(43.2, abs=0.5) and scores["psnr"] == pytest.approx(16.34, abs=0.1)
    spec = pred.task.data.spec
    base = slices_to_volume(pred.task.base_slices(volume_to_slices(pair.ct, pair.spacing, spec, "ct")),
                            pair.ct.shape, pair.spacing, spec)
    assert 0.01 < np.abs(vol - base).mean() < 0.08  # 0.020 when shipped


def test_shipped_ct_to_mr_unet_predicts_its_flip_average_as_when_it_was_shipped():
    """`hub:unet_sts` on the same 12 real slices: the mean over its 4 in-plane flips (its config's
    predict.flip_average), SSIM 44.1 %, PSNR 16.39 dB when shipped (2026-11-27, with the soft-tissue CT window
    as a second input channel); one pass 42.7 %, 16.39 dB. The UNet it replaced scored 43.3 %, 15.16 dB."""
    from pathlib import Path

    from rtgen.data.sources.image_pairs import load_pair
    from rtgen.tasks.image_base import score_volume

    pred = load_predictor(shipped_model_dir("image_regression"), "cpu")
    assert pred.task.predict.flip_average and pred.config["training"]["config"]["loss"]["kind"] == "l2"
    pair = load_pair(Path(__file__).parent / "data" / "sts_018")
    vol = pred.task.predict_pair(pred.model, pair, "cpu", 32)
    assert vol.shape == pair.ct.shape and 0 <= vol.min() and vol.max() <= 1
    scores = score_volume(vol, pair)
    assert pred.task.data.ct_windows == ((-200.0, 300.0),)
    assert scores["ssim"] == pytest.approx(44.1, abs=0.3) and scores["psnr"] == pytest.approx(16.39, abs=0.05)
