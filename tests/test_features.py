import numpy as np
import pytest
import torch

from rtgen.data.datasets.dose_slices import SliceDataset
from rtgen.data.transforms.augment import default_augmentation
from rtgen.data.transforms.features import (
    FeatureConfig,
    normalize_ct,
    patient_features,
    psdm,
    ptv_channel,
    scale_dose,
    signed_distance_mm,
    unscale_dose,
)


def test_ct_window_maps_to_minus_one_one():
    hu = np.array([-2000, -1024, 226, 1476, 3000], np.int16)  # HU + 1024: clipped, 0, 1250, 2500, clipped
    assert normalize_ct(hu).tolist() == pytest.approx([-1.0, -1.0, 0.0, 1.0, 1.0])


def test_ptv_channel_highest_prescription_wins():
    shape = (4, 4, 4)
    a, b = np.zeros(shape, bool), np.zeros(shape, bool)
    a[:2], b[1:3] = True, True
    ch = ptv_channel({"PTV56": a, "PTV70": b}, shape)
    assert ch[0].max() == pytest.approx(0.8) and ch[1].min() == 1.0 and ch[2].min() == 1.0 and ch[3].max() == 0
    assert ptv_channel({"PTV63": a}, shape).max() == pytest.approx(0.9)


def test_signed_distance_uses_true_spacing():
    mask = np.zeros((21, 21, 21), bool)
    mask[10, 10, 10] = True
    d = signed_distance_mm(mask, (1.0, 2.0, 3.0))
    assert d[13, 10, 10] == pytest.approx(3.0)
    assert d[10, 13, 10] == pytest.approx(6.0)
    assert d[10, 10, 13] == pytest.approx(9.0)
    assert d[12, 12, 10] == pytest.approx(np.hypot(2.0, 4.0))
    big = np.zeros((21, 21, 21), bool)
    big[5:16, 5:16, 5:16] = True
    d = signed_distance_mm(big, (2.0, 2.0, 2.0))
    assert d[10, 10, 10] == pytest.approx(-12.0)  # 6 voxels to the nearest outside voxel, inside is negative
    assert d[0, 10, 10] == pytest.approx(10.0)
    assert np.array_equal(signed_distance_mm(np.zeros((5, 5, 5), bool), (1, 1, 1)), np.zeros((5, 5, 5)))


def test_psdm_scaled_by_prescription():
    mask = np.zeros((9, 9, 9), bool)
    mask[4, 4, 4] = True
    base = signed_distance_mm(mask, (1, 1, 1)) / 100.0
    assert np.allclose(psdm(mask, "PTV56", (1, 1, 1)), base * 0.8)
    assert np.allclose(psdm(mask, "PTV70", (1, 1, 1)), base)
    assert np.allclose(psdm(mask, "Larynx", (1, 1, 1)), base)


def test_dose_scaling_is_exactly_invertible():
    rng = np.random.default_rng(0)
    dose = rng.uniform(0, 80, 10000).astype(np.float32)
    x = scale_dose(dose)
    assert x.min() >= -1 and x.max() <= 1
    assert np.array_equal(unscale_dose(x).astype(np.float32), dose)
    assert scale_dose(np.array([0.0, 40.0, 80.0, 95.0])).tolist() == [-1.0, 0.0, 1.0, 1.0]


def test_patient_features_channels_and_missing_structures(patient):
    cfg = FeatureConfig()
    f = patient_features(patient, cfg)
    assert f.shape == (20, 128, 128, 128) and f.dtype == np.float32
    names = cfg.channel_names
    assert names[:3] == ["CT", "PTV", "possible_dose_mask"]
    assert not f[names.index("Mandible")].any() and not f[names.index("PSDM_Mandible")].any()  # pt_204 has none
    assert np.array_equal(f[names.index("Larynx")] > 0, patient.structures["Larynx"])
    small = FeatureConfig(oars=("Brainstem",), psdm_structures=())
    assert patient_features(patient, small).shape[0] == small.n_channels == 4
    with pytest.raises(ValueError, match="unknown structures"):
        FeatureConfig(oars=("Heart",))


def test_slice_dataset_keeps_slices_touching_the_dose_mask(patient):
    ds = SliceDataset([patient], storage_dtype=np.float32, progress=False)
    expected = np.flatnonzero(patient.possible_dose_mask.any(axis=(0, 1)))
    assert [ds[i]["slice"] for i in range(len(ds))] == expected.tolist()
    item = ds[3]
    k = item["slice"]
    assert item["image"].shape == (20, 128, 128) and item["dose"].shape == (1, 128, 128)
    assert torch.allclose(item["dose"][0], torch.from_numpy(scale_dose(patient.dose[..., k]).astype(np.float32)))
    assert torch.equal(item["mask"][0] > 0, torch.from_numpy(patient.possible_dose_mask[..., k]))


def test_augmentation_is_identical_for_channels_target_and_mask(patient):
    ds = SliceDataset([patient], transform=default_augmentation(prob=1.0), storage_dtype=np.float32,
                      progress=False, seed=3)
    plain = SliceDataset([patient], storage_dtype=np.float32, progress=False)
    # put copies of the target and the mask into the image, so equal transforms give equal outputs
    j = 5
    ds.images[0][j][0] = ds.doses[0][j]
    ds.images[0][j][2] = ds.masks[0][j]
    changed = 0
    for _ in range(6):
        item = ds[j]
        assert torch.allclose(item["image"][0], item["dose"][0], atol=1e-5)
        assert torch.equal(item["image"][2] > 0.5, item["mask"][0] > 0.5) or (
            (item["image"][2] > 0.5) != (item["mask"][0] > 0.5)).float().mean() < 0.01
        changed += not torch.allclose(item["dose"], plain[j]["dose"])
    assert changed >= 5  # prob=1 affine: the sample really is transformed
