"""Beam-geometry features: ray-sums and apertures against hand-computed phantoms, the dose proxy on a
bundled patient, and the on-disk cache."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from rtgen.core.errors import ConfigError
from rtgen.core.schema import validate_section
from rtgen.data import read_patient
from rtgen.data.examples import example_patients_dir
from rtgen.data.records import Patient
from rtgen.data.transforms import beam_features as geo
from rtgen.data.transforms.beam_features import (
    GeometryConfig,
    cache_path,
    cached_geometry_features,
    geometry_features,
    oar_ptv_overlap,
)

AXES = GeometryConfig(angles_deg=(0, 90, 180, 270))


def phantom(shape=(40, 40, 6), spacing=(2.0, 2.0, 3.0), body=(slice(5, 35), slice(5, 35)), ct=None, **structures):
    pdm = np.zeros(shape, bool)
    pdm[body[0], body[1], :] = True
    if ct is None:
        ct = np.full(shape, -1000, np.int16)
        ct[pdm] = 0
    return Patient(id="phantom", ct=ct, dose=None, possible_dose_mask=pdm,
                   structures={k: v for k, v in structures.items()}, spacing=spacing)


def test_radiological_depth_through_a_bone_slab_at_0_90_180_deg():
    # water box rows/cols 5..34, bone (1000 HU -> density 2) in rows 10..13: 4 voxels of 2 mm
    p = phantom()
    p.ct[10:14, 5:35, :] = 1000
    f = geometry_features(p, AXES)
    step = 2.0
    for i in (14, 20, 34):  # behind the slab, entering at row 5 (angle 0 travels along +axis 0)
        geometric = (i - 5 + 0.5) * step
        assert f["surface_depth_g000"][i, 20, 3] == pytest.approx(geometric, abs=1e-4)
        assert f["raddepth_g000"][i, 20, 3] == pytest.approx(geometric + 4 * step * (2 - 1), abs=1e-4)
    # in front of the slab at 180 deg (entering at row 34, travelling along -axis 0)
    assert f["raddepth_g180"][7, 20, 3] == pytest.approx((34 - 7 + 0.5 + 4) * step, abs=1e-4)
    assert f["surface_depth_g180"][7, 20, 3] == pytest.approx((34 - 7 + 0.5) * step, abs=1e-4)
    # at 90 deg rays travel along +axis 1: inside the slab all the path is bone, beside it water
    for j in (5, 17, 30):
        geometric = (j - 5 + 0.5) * step
        assert f["surface_depth_g090"][11, j, 2] == pytest.approx(geometric, abs=1e-4)
        assert f["raddepth_g090"][11, j, 2] == pytest.approx(2 * geometric, abs=1e-4)
        assert f["raddepth_g090"][20, j, 2] == pytest.approx(geometric, abs=1e-4)
    assert f["raddepth_g270"][20, 30, 2] == pytest.approx((34 - 30 + 0.5) * step, abs=1e-4)
    # nothing outside the body
    for name, v in f.items():
        assert not v[~p.possible_dose_mask].any(), name


def test_surface_depth_at_an_oblique_angle_in_a_water_disc():
    # disc of radius 15 voxels (30 mm); every beam reaches the centre after one radius of water
    n = 41
    yy, xx = np.mgrid[:n, :n] - 20
    disc = (yy ** 2 + xx ** 2) <= 15 ** 2
    p = phantom(shape=(n, n, 4), body=(slice(None), slice(None)))
    p.possible_dose_mask[:] = disc[:, :, None]
    p.ct[:] = np.where(disc[:, :, None], 0, -1000)
    f = geometry_features(p, GeometryConfig(angles_deg=(45, 130)))
    for tag in ("g045", "g130"):
        assert f[f"surface_depth_{tag}"][20, 20, 1] == pytest.approx(30.0, abs=2.0)  # one voxel
        assert f[f"raddepth_{tag}"][20, 20, 1] == pytest.approx(30.0, abs=2.0)
    assert f["surface_depth_min"][20, 20, 1] == pytest.approx(30.0, abs=2.0)


def test_no_ct_is_water():
    p = phantom()
    p.ct[10:14] = 1000
    with_ct = geometry_features(p, AXES)
    p.ct = None
    f = geometry_features(p, AXES)
    assert np.array_equal(f["surface_depth_g000"], with_ct["surface_depth_g000"])
    assert np.allclose(f["raddepth_g000"], f["surface_depth_g000"])


def test_aperture_of_a_cube_is_its_projection_along_the_ray():
    shape = (40, 40, 10)
    cube = np.zeros(shape, bool)
    cube[15:21, 22:28, 3:7] = True
    p = phantom(shape=shape, body=(slice(2, 38), slice(2, 38)), PTV63=cube)
    f = geometry_features(p, AXES)
    body = p.possible_dose_mask
    prism0 = np.zeros(shape, bool)
    prism0[:, 22:28, 3:7] = True  # angle 0: rays along axis 0
    prism90 = np.zeros(shape, bool)
    prism90[15:21, :, 3:7] = True  # angle 90: rays along axis 1
    for tag, prism in (("g000", prism0), ("g180", prism0), ("g090", prism90), ("g270", prism90)):
        expected = np.where(prism & body, np.float32(63 / 70), np.float32(0))
        assert np.allclose(f[f"aperture_{tag}"], expected, atol=1e-6), tag
    # a voxel lies in the fields of 2 beams (beside the cube in-plane) or 4 (inside it)
    assert f["beam_count"][17, 24, 4] == pytest.approx(4)
    assert f["beam_count"][5, 24, 4] == pytest.approx(2)
    assert f["beam_count"][5, 5, 4] == pytest.approx(0)


def test_dose_proxy_peaks_in_the_ptv_and_falls_with_distance():
    shape = (48, 48, 24)
    ptv = np.zeros(shape, bool)
    ptv[20:28, 18:26, 9:15] = True
    p = phantom(shape=shape, spacing=(3.0, 3.0, 3.0), body=(slice(4, 44), slice(4, 44)), PTV70=ptv)
    f = geometry_features(p)
    proxy = f["beam_dose_proxy"]
    assert proxy[ptv].mean() == pytest.approx(1.0, rel=1e-5)
    assert np.array_equal(f["beam_dose_proxy_PTV70"], proxy)  # one level: same proxy
    assert not f["beam_dose_proxy_PTV56"].any()
    peak = np.unravel_index(np.argmax(proxy), shape)
    assert ptv[peak]
    dist = geo.ndimage.distance_transform_edt(~ptv, sampling=p.spacing)
    body = p.possible_dose_mask
    shells = [proxy[body & (dist > lo) & (dist <= hi)].mean() for lo, hi in ((0, 6), (6, 15), (15, 30), (30, 60))]
    assert proxy[ptv].mean() > shells[0] > shells[1] > shells[2] > shells[3] > 0


def test_per_prescription_proxies_scale_with_prescription():
    shape = (40, 40, 12)
    a, b = np.zeros(shape, bool), np.zeros(shape, bool)
    a[10:16, 10:16, 4:8] = True
    b[24:30, 24:30, 4:8] = True
    p = phantom(shape=shape, body=(slice(2, 38), slice(2, 38)), PTV56=a, PTV70=b)
    f = geometry_features(p, GeometryConfig(per_angle=False))
    assert "aperture_g000" not in f
    assert f["beam_dose_proxy_PTV56"][a].mean() == pytest.approx(56 / 70, rel=1e-5)
    assert f["beam_dose_proxy_PTV70"][b].mean() == pytest.approx(1.0, rel=1e-5)
    assert f["beam_dose_proxy"][b].mean() == pytest.approx(1.0, rel=1e-5)


def test_oar_overlap_fraction_is_exact():
    shape = (30, 30, 30)
    ptv = np.zeros(shape, bool)
    ptv[:10] = True
    oar = np.zeros(shape, bool)
    oar[10:20, 5:15, 5:15] = True  # rows 10..19 lie 1..10 mm from the PTV (row spacing 1 mm)
    spacing = (1.0, 1.0, 2.0)
    assert np.all(oar_ptv_overlap({"Brainstem": oar}, ptv, spacing, 5.0)[oar] == 0.5)
    assert np.all(oar_ptv_overlap({"Brainstem": oar}, ptv, spacing, 10.0)[oar] == 1.0)
    assert not oar_ptv_overlap({"Brainstem": oar}, ptv, spacing, 5.0)[~oar].any()
    # a second OAR far away overlaps nothing; where OARs overlap the larger fraction wins
    far = np.zeros(shape, bool)
    far[25:30, 20:30, 20:30] = True
    far[15, 10, 10] = True
    got = oar_ptv_overlap({"Brainstem": oar, "SpinalCord": far}, ptv, spacing, 5.0)
    assert got[27, 25, 25] == 0 and got[15, 10, 10] == 0.5
    # through geometry_features: same numbers, named by margin
    p = phantom(shape=shape, spacing=spacing, body=(slice(None), slice(None)), PTV70=ptv, Brainstem=oar)
    f = geometry_features(p, GeometryConfig(angles_deg=(0,), oar_margins_mm=(5.0, 2.5), per_angle=False))
    assert np.all(f["oar_ptv_overlap_5mm"][oar] == 0.5) and np.all(f["oar_ptv_overlap_2.5mm"][oar] == 0.2)


def test_sampler_numba_matches_numpy():
    rng = np.random.default_rng(0)
    src = rng.random((2, 9, 11, 5), dtype=np.float32)
    p0 = rng.uniform(-2, 11, (7, 6))
    p1 = rng.uniform(-2, 13, (7, 6))
    ref = geo._sample_plane_numpy(src, geo._snap(p0), geo._snap(p1))
    assert np.allclose(geo.sample_plane(src, p0, p1), ref, atol=1e-6)


def test_config_is_validated():
    assert GeometryConfig.from_dict(GeometryConfig().to_dict()) == GeometryConfig()
    with pytest.raises(ConfigError, match="mu_per_mm"):
        validate_section(GeometryConfig, {"mu_per_mm": -1}, "geometry")
    with pytest.raises(ConfigError, match="unknown key"):
        validate_section(GeometryConfig, {"mu": 0.1}, "geometry")
    with pytest.raises(ValueError, match="repeated"):
        GeometryConfig(angles_deg=(0, 360))
    with pytest.raises(ValueError, match="isotropic"):
        geometry_features(phantom(spacing=(2.0, 3.0, 3.0)))


@pytest.fixture(scope="module")
def pt204():
    p = read_patient(example_patients_dir() / "pt_204")
    return p, geometry_features(p)


def test_pt204_features_are_finite_on_the_grid_and_track_the_dose(pt204):
    p, f = pt204
    assert list(f) == GeometryConfig().feature_names
    for name, v in f.items():
        assert v.dtype == np.float32 and v.shape == p.grid, name
        assert np.isfinite(v).all(), name
        assert not v[~p.possible_dose_mask].any(), name
    m = p.possible_dose_mask
    r = stats.spearmanr(f["beam_dose_proxy"][m], p.dose[m])[0]
    assert r > 0.7  # measured 0.82 (Pearson 0.81)
    assert f["beam_count"].max() == pytest.approx(9, abs=1e-3)
    assert 0 < f["oar_ptv_overlap_10mm"].max() <= 1


def test_cache_round_trip_and_corrupt_file(tmp_path, monkeypatch):
    shape = (24, 24, 6)
    ptv = np.zeros(shape, bool)
    ptv[10:14, 10:14, 2:4] = True
    oar = np.zeros(shape, bool)
    oar[14:18, 10:14, 2:4] = True
    p = phantom(shape=shape, body=(slice(2, 22), slice(2, 22)), PTV70=ptv, Larynx=oar)
    cfg = GeometryConfig(angles_deg=(0, 120, 240))
    fresh = geometry_features(p, cfg)
    first = cached_geometry_features(p, cfg, tmp_path)
    path = cache_path(p, cfg, tmp_path)
    assert path.exists() and list(tmp_path.iterdir()) == [path]  # no temporary left behind

    def boom(*a, **k):
        raise AssertionError("should have read the cache")

    monkeypatch.setattr(geo, "geometry_features", boom)
    second = cached_geometry_features(p, cfg, tmp_path)
    for name in fresh:
        assert np.array_equal(first[name], fresh[name]) and np.array_equal(second[name], fresh[name]), name
    monkeypatch.undo()

    # another config or other masks: another key
    assert cache_path(p, GeometryConfig(angles_deg=(0, 120)), tmp_path) != path
    p2 = phantom(shape=shape, body=(slice(2, 22), slice(2, 22)), PTV70=ptv)
    assert cache_path(p2, cfg, tmp_path) != path

    for junk in (b"not a zip", path.read_bytes()[: path.stat().st_size // 2]):
        path.write_bytes(junk)
        again = cached_geometry_features(p, cfg, tmp_path)
        assert all(np.array_equal(again[n], fresh[n]) for n in fresh)
        assert geo._read_cache(path, geo.cache_key(p, cfg), cfg.feature_names, shape) is not None  # rewritten
