import numpy as np
import pytest
import torch
from monai.metrics import SSIMMetric
from scipy import ndimage

from rtgen.core.errors import RtgenError
from rtgen.imaging.scores import image_scores
from rtgen.imaging.similarity import image_metrics, normalise_percentiles


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


# ---- DiffMa scoring: per-patient 0.5/99.5 percentile normalisation, MR grid (image_scores) ----

def _phantom_mr(shape=(48, 40, 6), seed=0):
    """A textured ellipse (the body) on a dark background, in arbitrary scanner units."""
    rng = np.random.default_rng(seed)
    xx, yy = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    body = (xx / 0.8) ** 2 + (yy / 0.7) ** 2 < 1
    tex = ndimage.gaussian_filter(rng.normal(0, 1, shape), (2, 2, 0))
    return np.where(body[..., None], 600 + 400 * tex, 5.0) + rng.normal(0, 2, shape), np.repeat(body[..., None], shape[2], 2)


def test_identical_volumes_score_100_0_and_inf():
    v, body = _phantom_mr()
    s = image_scores(v, v, mask=body)
    assert s["ssim"] == pytest.approx(100.0) and s["mse"] == 0 and s["psnr"] == float("inf")
    assert s["ssim_body"] == pytest.approx(100.0) and s["mse_body"] == 0 and s["psnr_body"] == float("inf")
    assert set(s) == {"ssim", "psnr", "mse", "ssim_body", "psnr_body", "mse_body"}


def test_each_volume_is_normalised_by_its_own_percentiles():
    """A scanner gain and offset do not change the scores: MR has no absolute unit."""
    v, body = _phantom_mr()
    s = image_scores(3.0 * v + 100.0, v, mask=body)
    assert s["ssim"] == pytest.approx(100.0, abs=1e-6) and s["mse"] == pytest.approx(0.0, abs=1e-12)


def test_constant_offset_without_normalisation_is_hand_computable():
    ref = np.tile(np.linspace(0, 200, 32)[:, None, None], (1, 24, 4))
    s = image_scores(ref + 10.0, ref, percentiles=None, mask=np.ones(ref.shape, bool))
    assert s["mse"] == pytest.approx(100.0) and s["mse_body"] == pytest.approx(100.0)
    assert s["psnr"] == pytest.approx(10 * np.log10(255.0**2 / 100.0))  # 28.13 dB
    # with normalisation, the same offset vanishes (both volumes span 0-255 after it)
    assert image_scores(ref + 10.0, ref)["mse"] == pytest.approx(0.0, abs=1e-9)


def test_a_shifted_volume_scores_lower_and_more_shift_is_worse():
    v, body = _phantom_mr()
    one, five = (image_scores(np.roll(v, k, axis=0), v, mask=body) for k in (1, 5))
    assert 0 < five["ssim"] < one["ssim"] < 100 and five["psnr"] < one["psnr"]
    assert five["mse"] > one["mse"] > 0


def test_the_mask_restricts_the_scores_to_the_body():
    v, body = _phantom_mr()
    spoiled = v.copy()
    spoiled[~body] = np.random.default_rng(3).uniform(0, 1000, (~body).sum())  # noise in the air only
    s = image_scores(spoiled, v, mask=body, percentiles=None, data_range=1000.0)
    assert s["mse_body"] == 0 and s["psnr_body"] == float("inf") and s["mse"] > 0
    assert s["ssim"] < s["ssim_body"] < 100  # windows at the skin see some of the noise
    # the slice axis is honoured: the same volumes transposed, scored along axis 0, give the same scores
    t = image_scores(np.moveaxis(spoiled, 2, 0), np.moveaxis(v, 2, 0), mask=np.moveaxis(body, 2, 0),
                     slice_axis=0, percentiles=None, data_range=1000.0)
    assert t == pytest.approx(s)


def test_bad_inputs_fail_with_one_line():
    v, body = _phantom_mr()
    with pytest.raises(RtgenError, match="must be 3D volumes on one grid"):
        image_scores(v[:-1], v)
    with pytest.raises(RtgenError, match="mask .* is not on the volumes' grid"):
        image_scores(v, v, mask=body[:-1])
    with pytest.raises(RtgenError, match="the body mask is empty"):
        image_scores(v, v, mask=np.zeros(v.shape, bool))
    with pytest.raises(RtgenError, match="NaN"):
        image_scores(np.where(body, np.nan, v), v)
    with pytest.raises(RtgenError, match="smaller than the 11 x 11 SSIM window"):
        image_scores(v, v, slice_axis=0)  # slices of 40 x 6
