"""Slice preparation for 2D latent diffusion: intensities, body masks, and geometry that inverts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from rtgen.core.errors import ConfigError, RtgenError
from rtgen.data.transforms.image_slices import (
    SliceSpec,
    body_mask_ct,
    body_mask_mr,
    mask_to_slices,
    mr_field_of_view,
    normalise_mr,
    pad_or_crop,
    resample_inplane,
    slices_to_volume,
    to_rgb,
    uncrop,
    volume_to_slices,
    window_ct,
    with_context,
    with_windows,
)


def _phantom(shape=(90, 70, 6), centre=None, half=8, inside=40.0, outside=-1000.0):
    """Air with a square prism of soft tissue centred at `centre` (grid centre by default)."""
    v = np.full(shape, outside, np.float32)
    cx, cy = centre if centre is not None else ((shape[0] - 1) / 2, (shape[1] - 1) / 2)
    xx, yy = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    v[(np.abs(xx - cx) <= half) & (np.abs(yy - cy) <= half)] = inside
    return v


def _centroid(img):
    w = np.asarray(img, np.float64)
    idx = np.indices(w.shape)
    return [float((i * w).sum() / w.sum()) for i in idx]


def test_ct_window_is_linear_and_clipped():
    hu = np.array([-2000, -1000, 250, 1500, 3000], np.float32)
    np.testing.assert_allclose(window_ct(hu), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(window_ct(hu, lo=-160, hi=240), [0, 0, 1, 1, 1])
    np.testing.assert_allclose(window_ct(np.array([40.0]), -160, 240), [0.5])
    assert window_ct(hu).dtype == np.float32
    with pytest.raises(RtgenError, match="increasing"):
        window_ct(hu, 100, 100)


def test_mr_percentiles_and_the_mask():
    mr = np.arange(7 * 11 * 13, dtype=np.float32).reshape(7, 11, 13)
    n = normalise_mr(mr, 0.0, 100.0)
    assert n.min() == 0 and n.max() == 1 and n.dtype == np.float32
    n = normalise_mr(mr, 10.0, 90.0)
    lo, hi = np.percentile(mr, [10, 90])
    assert np.mean(n == 0) == pytest.approx(0.1, abs=0.01) and np.mean(n == 1) == pytest.approx(0.1, abs=0.01)
    np.testing.assert_allclose(n[(mr > lo) & (mr < hi)], ((mr - lo) / (hi - lo))[(mr > lo) & (mr < hi)], rtol=1e-5)
    # percentiles taken inside the mask only: a bright outlier outside it does not squash the body
    body = np.zeros(mr.shape, bool)
    body[2:5, 3:8, 4:9] = True
    spiked = np.where(body, 100.0, 0.0).astype(np.float32)
    spiked[0, 0, 0] = 1e6
    assert normalise_mr(spiked, 0.5, 99.5, mask=body)[body].max() == 0  # constant body -> 0 (no division by 0)
    spiked[body] = np.linspace(100, 200, body.sum())
    assert normalise_mr(spiked, 0.0, 100.0, mask=body)[body].max() == pytest.approx(1.0)
    with pytest.raises(RtgenError, match="mask shape"):
        normalise_mr(mr, mask=body[:-1])


def test_body_masks_keep_the_largest_component_with_holes_filled():
    ct = _phantom(half=15)
    ct[40:50, 30:40, :] = -1000.0  # an air hole inside the body (bowel gas)
    ct[2:5, 2:5, :] = 500.0  # a small separate object (a marker, the couch)
    ct[0, :, 2] = 0.0  # a one-voxel-thin line: opened away
    m = body_mask_ct(ct)
    truth = _phantom(half=15) > -500
    assert m.dtype == bool and m.shape == ct.shape
    np.testing.assert_array_equal(m, truth)
    mr = np.where(truth, 800.0, 5.0) + np.random.default_rng(0).normal(0, 3, ct.shape)
    mr[40:50, 30:40, :] = 0.0  # dark bone inside
    np.testing.assert_array_equal(body_mask_mr(mr), truth)
    assert not body_mask_ct(np.full((20, 20, 2), -1000.0)).any()  # all air: empty, no error


def test_resample_inplane_keeps_z_and_the_physical_extent():
    v = _phantom(shape=(100, 80, 4))
    r = resample_inplane(v, (1.0, 1.0), 2.0, order=1)
    assert r.shape == (50, 40, 4)
    r = resample_inplane(v, (1.172, 0.977), 1.25)
    assert r.shape == (round(100 * 1.172 / 1.25), round(80 * 0.977 / 1.25), 4)
    # the centre stays the centre
    c_in, c_out = _centroid(v[..., 0] > 0), _centroid(r[..., 0] > 0)
    assert c_out[0] == pytest.approx((r.shape[0] - 1) / 2, abs=0.5) and c_in[0] == pytest.approx(49.5)
    np.testing.assert_array_equal(resample_inplane(v, (1.25, 1.25), 1.25), v)  # same spacing: unchanged


def test_pad_or_crop_is_centred_and_uncrop_inverts_it():
    img = np.arange(5 * 9, dtype=np.float32).reshape(5, 9)
    out = pad_or_crop(img, 6, fill=-1)  # pad rows 5 -> 6 (extra row after), crop columns 9 -> 6
    assert out.shape == (6, 6)
    np.testing.assert_array_equal(out[:5], img[:, 1:7])
    assert (out[5] == -1).all()
    back = uncrop(out, (5, 9), fill=-7)
    np.testing.assert_array_equal(back[:, 1:7], img[:, 1:7])
    assert (back[:, 0] == -7).all() and (back[:, 7:] == -7).all()
    # padding only: exact inverse; batch axes in front are carried along
    stack = np.stack([img, img + 100])
    np.testing.assert_array_equal(uncrop(pad_or_crop(stack, 12), (5, 9)), stack)
    # odd padding 5 -> 8: 1 before, 2 after
    assert (pad_or_crop(np.ones((5, 5)), 8)[:, 3] == [0, 1, 1, 1, 1, 1, 0, 0]).all()


def test_to_rgb_replicates_channels_first():
    x = np.random.default_rng(1).random((4, 16, 16)).astype(np.float32)
    rgb = to_rgb(x)
    assert rgb.shape == (4, 3, 16, 16)
    assert all(np.array_equal(rgb[:, c], x) for c in range(3))


@pytest.mark.parametrize("shape, spacing", [((90, 70, 6), (0.977, 0.977, 3.27)),  # padded to 64 at 1.5 mm
                                            ((151, 133, 5), (1.172, 1.172, 3.27)),  # cropped
                                            ((97, 55, 3), (1.0, 1.2, 2.0))])  # odd sizes, one axis each way
def test_volume_to_slices_and_back_keeps_the_geometry(shape, spacing):
    spec = SliceSpec(size=64, spacing_mm=1.5)
    ct = _phantom(shape, half=10)
    s = volume_to_slices(ct, spacing, spec, kind="ct")
    assert s.shape == (shape[2], 64, 64) and s.dtype == np.float32 and s.min() >= 0 and s.max() <= 1
    # a centred square stays centred on the slice
    cy, cx = _centroid(s[0] > 0.2)
    assert cy == pytest.approx(31.5, abs=0.75) and cx == pytest.approx(31.5, abs=0.75)
    # its physical width is kept: 21 voxels of spacing[0] mm -> 21 * spacing[0] / 1.5 pixels
    assert (s[0] > 0.2).sum(axis=0).max() == pytest.approx(21 * spacing[0] / 1.5, abs=1.5)
    body = mask_to_slices(ct > -500, spacing, spec)  # a mask is cut exactly as its image
    assert body.dtype == bool and body.shape == s.shape and np.array_equal(body, s >= 0.208 - 1e-5)  # 0.208: half the square
    back = slices_to_volume(s, shape, spacing, spec)
    assert back.shape == shape and back.dtype == np.float32
    want = window_ct(ct)
    sq = want > 0.2
    plane = np.ones((5, 5, 1), bool)
    far = ~(ndimage.binary_dilation(sq, plane) & ~ndimage.binary_erosion(sq, plane))
    np.testing.assert_allclose(back[far], want[far], atol=1e-5)  # 2+ voxels from the square's edge: exact
    np.testing.assert_allclose(_centroid(back[..., 1] > 0.2), _centroid(want[..., 1] > 0.2), atol=0.5)


def test_same_spacing_round_trip_is_exact_where_not_cropped():
    spec = SliceSpec(size=32, spacing_mm=1.0)
    rng = np.random.default_rng(2)
    mr = rng.random((40, 24, 3)).astype(np.float32) * 1000
    s = volume_to_slices(mr, (1.0, 1.0, 3.0), spec, kind="mr")
    np.testing.assert_allclose(s[:, :, 4:28], np.moveaxis(normalise_mr(mr), 2, 0)[:, 4:36], atol=1e-6)
    back = slices_to_volume(s, mr.shape, (1.0, 1.0, 3.0), spec, fill=-1)
    np.testing.assert_allclose(back[4:36], normalise_mr(mr)[4:36], atol=1e-6)
    assert (back[:4] == -1).all() and (back[36:] == -1).all()  # cropped rows come back as `fill`


def test_bad_specs_and_shapes_fail_with_one_line():
    with pytest.raises(ConfigError, match="SliceSpec: size must be a multiple of 8"):
        SliceSpec(size=100)
    with pytest.raises(ConfigError, match="SliceSpec: ct_window must be increasing"):
        SliceSpec(ct_window=(500, -500))
    with pytest.raises(ConfigError, match="SliceSpec: mr_percentiles"):
        SliceSpec(mr_percentiles=(99.5, 0.5))
    with pytest.raises(RtgenError, match="expected a 3D volume"):
        volume_to_slices(np.zeros((8, 8)), (1, 1, 1))
    with pytest.raises(RtgenError, match="kind must be 'ct' or 'mr'"):
        volume_to_slices(np.zeros((8, 8, 2)), (1, 1, 1), kind="pet")
    with pytest.raises(RtgenError, match="spacing must be three positive"):
        volume_to_slices(np.zeros((8, 8, 2)), (1, 0, 1))
    with pytest.raises(RtgenError, match="do not fit a volume"):
        slices_to_volume(np.zeros((3, 64, 64)), (8, 8, 2), (1, 1, 1), SliceSpec(size=64))


def test_an_off_centre_object_keeps_its_distance_from_the_centre_in_mm():
    shape, spacing, spec = (90, 70, 2), (0.977, 0.977, 3.27), SliceSpec(size=64, spacing_mm=1.5)
    ct = _phantom(shape, centre=(20, 50), half=5)
    s = volume_to_slices(ct, spacing, spec)
    cy, cx = _centroid(s[0])  # intensity-weighted: air is 0
    # where the scan's centre lands: a whole-field slice's centroid (31, not 31.5, when 59 rows pad to 64)
    oy, ox = _centroid(volume_to_slices(np.full(shape, 1500.0), spacing, spec)[0])
    assert cy - oy == pytest.approx((20 - 44.5) * 0.977 / 1.5, abs=0.05)
    assert cx - ox == pytest.approx((50 - 34.5) * 0.977 / 1.5, abs=0.05)
    back = slices_to_volume(s, shape, spacing, spec)
    np.testing.assert_allclose(_centroid(back[..., 0]), [20, 50], atol=0.15)  # 0.1 voxel: two linear resamplings


def test_the_mr_field_of_view_drops_only_the_zero_planes_padding_each_border():
    mr = np.full((6, 5, 7), 7.0, np.float32)
    mr[:, :, :2] = 0  # two padded slices at the start
    mr[:, :, 6] = 0  # and one at the end
    mr[:, :, 4] = 0  # an empty plane inside is data, not padding
    mr[0] = 0  # a padded row
    mr[2, 2, 3] = 0  # a dark voxel is data
    fov = mr_field_of_view(mr)
    expected = np.ones(mr.shape, bool)
    expected[:, :, [0, 1, 6]] = False
    expected[0] = False
    assert np.array_equal(fov, expected)
    assert not mr_field_of_view(np.zeros((3, 3, 3))).any()
    with pytest.raises(RtgenError, match="3D"):
        mr_field_of_view(np.ones((3, 3)))


def test_the_mr_field_of_view_leaves_out_the_wedge_an_oblique_acquisition_leaves_on_the_grid():
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(np.arange(30), np.arange(24), np.arange(10), indexing="ij")
    acquired = x + 0.5 * y + 2 * z <= 40  # an oblique face of the acquisition box
    mr = np.where(acquired, rng.uniform(1, 100, acquired.shape), 0.0)
    mr[5, 5, 5] = 0  # a zero inside the scan (noise in the air, a dark voxel) is data
    mr[10:12, 3, 2:4] = 0
    fov = mr_field_of_view(mr)
    assert np.array_equal(fov, acquired)  # the wedge's voxels, and none of the scan's
    mr[:, :, 9] = 0  # padded slices and the wedge together
    expected = acquired.copy()
    expected[:, :, 9] = False
    assert np.array_equal(mr_field_of_view(mr), expected)
    flat = np.zeros((6, 6, 6))
    flat[1:4, 2:5, 3] = 5.0
    flat[2, 3, 3] = 0  # one acquired plane: the hull is flat, its bounding box is the field of view
    expected = np.zeros(flat.shape, bool)
    expected[1:4, 2:5, 3] = True
    assert np.array_equal(mr_field_of_view(flat), expected)


def test_slice_context_stacks_neighbours_in_z_order_and_repeats_the_ends():
    s = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    c = with_context(s, 1)
    assert c.shape == (4, 3, 2, 2)
    assert c[:, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    assert with_context(s, 0).shape == (4, 1, 2, 2)


def test_ct_windows_add_one_rewindowed_copy_of_each_channel():
    base = (-1000.0, 1500.0)
    hu = np.array([-1000.0, -200.0, -100.0, 40.0, 300.0, 1500.0], np.float32)
    c = ((hu - base[0]) / (base[1] - base[0])).reshape(1, 1, 2, 3)
    w = with_windows(np.concatenate([c, c], axis=1), base, ((-200.0, 300.0),))
    assert w.shape == (1, 4, 2, 3)
    assert np.array_equal(w[:, :2], np.concatenate([c, c], axis=1))  # the given channels first, unchanged
    soft = w[0, 2].ravel()
    assert np.allclose(soft, [0.0, 0.0, 0.2, 0.48, 1.0, 1.0], atol=1e-5)  # fat 0.2, muscle 0.48: 0.28 apart, not 0.056
    assert np.array_equal(w[0, 2], w[0, 3])
    assert with_windows(c, base, ()).shape == c.shape
