import numpy as np
import pytest
import torch
from monai.metrics import SSIMMetric

from rtgen.evaluation.image import image_metrics, normalise_percentiles


def _volume(seed=0, shape=(40, 36, 5)):
    rng = np.random.default_rng(seed)
    base = np.add.outer(np.add.outer(np.arange(shape[0]), np.arange(shape[1])), np.zeros(shape[2])) * 2.0
    return base + rng.normal(0, 10, shape)


def test_identical_volumes_score_perfectly():
    v = _volume()
    m = image_metrics(v, v, data_range=255.0, mask=np.ones(v.shape, bool))
    assert m["ssim"] == pytest.approx(100.0) and m["mse"] == 0 and m["psnr"] == float("inf")
    assert m["ssim_mask"] == pytest.approx(100.0) and m["mse_mask"] == 0


def test_constant_offset_gives_the_hand_computed_mse_and_psnr():
    v = _volume()
    m = image_metrics(v + 5.0, v, data_range=255.0)
    assert m["mse"] == pytest.approx(25.0)
    assert m["psnr"] == pytest.approx(10 * np.log10(255.0**2 / 25.0))  # 34.15 dB


def test_ssim_is_monai_per_slice_mean_and_the_mask_restricts_it():
    ref, pred = _volume(0), _volume(1)
    m = image_metrics(pred, ref, data_range=255.0, mask=np.ones(ref.shape, bool))
    slices = lambda v: torch.from_numpy(np.moveaxis(v, -1, 0)[:, None].astype(np.float32))  # noqa: E731
    monai = SSIMMetric(spatial_dims=2, data_range=255.0)(slices(pred), slices(ref)).mean().item()
    assert m["ssim"] == pytest.approx(100 * monai, rel=1e-5) and m["ssim_mask"] == pytest.approx(m["ssim"], rel=1e-5)
    # errors only outside the mask: the masked scores see none of them
    mask = np.zeros(ref.shape, bool)
    mask[:20] = True
    damaged = ref.copy()
    damaged[20:] += 50.0
    d = image_metrics(damaged, ref, data_range=255.0, mask=mask)
    assert d["mse_mask"] == 0 and d["mse"] == pytest.approx(1250.0) and d["ssim"] < 100.0
    # SSIM windows centred inside the mask but reaching past its edge (rows 15-19) see the damage
    assert 90.0 < d["ssim_mask"] < 100.0


def test_percentile_normalisation_spans_0_to_255():
    v = normalise_percentiles(_volume())
    assert v.min() == 0 and v.max() == pytest.approx(255.0)
    assert np.mean(v == 0) == pytest.approx(0.005, abs=0.002)
