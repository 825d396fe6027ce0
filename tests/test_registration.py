"""`rtgen register` on synthetic CT/MR pairs with a known misalignment (never the shared data folder).

The phantom is a limb: an ellipsoid of muscle under a fat layer, a bone (cortex around fatty marrow)
and a tumour sphere. Its MR is the same anatomy with T1-like intensities (fat bright, cortex dark),
seen through a known rigid transform: recovering that transform is the test."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from rtgen.cli import app
from rtgen.core.errors import DataError
from rtgen.data.registration import RegistrationSettings, assess, find_pairs, load_pair, read_image, register_pair
from rtgen.data.registration import masks as M
from rtgen.data.registration.pair import bspline_mesh, initial_transform

sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(2)

SHAPE = (48, 48, 40)  # x, y, z
SPACING = (2.5, 2.5, 3.0)
AIR, FAT, MUSCLE, CORTEX, MARROW, TUMOUR = range(6)
CT_HU = np.array([-1000, -100, 40, 1200, -50, 60], np.float32)
MR_T1 = np.array([0, 900, 350, 20, 850, 200], np.float32)
FAST = RegistrationSettings(threads=2, bspline_iterations=20)


def labels() -> sitk.Image:
    """The phantom's tissue labels on the CT grid, centred on the physical origin."""
    origin = [-(n - 1) * s / 2 for n, s in zip(SHAPE, SPACING)]
    z, y, x = np.meshgrid(*[o + s * np.arange(n) for o, s, n in zip(origin[::-1], SPACING[::-1], SHAPE[::-1])],
                          indexing="ij")
    lab = np.full(x.shape, AIR, np.uint8)
    body = (x / 48) ** 2 + (y / 36) ** 2 + (z / 50) ** 2 <= 1
    lab[body] = FAT
    lab[(x / 42) ** 2 + (y / 30) ** 2 + (z / 45) ** 2 <= 1] = MUSCLE
    bx, by = -14 + 0.15 * z, 8 - 0.1 * z  # a slightly oblique long bone
    r = np.hypot(x - bx, y - by)
    lab[(r <= 9) & body & (np.abs(z) < 42)] = CORTEX
    lab[(r <= 5.5) & body & (np.abs(z) < 42)] = MARROW
    lab[(x - 18) ** 2 + (y + 6) ** 2 + ((z - 5) / 1.3) ** 2 <= 12 ** 2] = TUMOUR
    img = sitk.GetImageFromArray(lab)
    img.SetSpacing(SPACING)
    img.SetOrigin(origin)
    return img


def true_transform(angles_deg=(3.0, -2.0, 4.0), shift=(4.0, -3.0, 2.0)) -> sitk.Euler3DTransform:
    """MR physical point -> CT physical point, rotating about a point off the tumour."""
    tx = sitk.Euler3DTransform()
    tx.SetCenter((5.0, 2.0, 0.0))
    tx.SetRotation(*map(math.radians, angles_deg))
    tx.SetTranslation(shift)
    return tx


def phantom(tx: sitk.Transform, mr_shift=(0.0, 0.0, 0.0), seed: int = 0):
    """(ct, mr, ct_tumour, mr_tumour): the MR sees the anatomy through `tx`, on a cropped grid moved by `mr_shift`."""
    rng = np.random.default_rng(seed)
    lab = labels()
    arr = sitk.GetArrayFromImage(lab)
    ct = M.like((CT_HU[arr] + rng.normal(0, 15, arr.shape)).astype(np.float32), lab)
    ct_tumour = M.like(arr == TUMOUR, lab)
    grid = sitk.RegionOfInterest(lab, [40, 40, 32], [4, 4, 4])  # the MR field of view is smaller
    grid.SetOrigin([o + s for o, s in zip(grid.GetOrigin(), mr_shift)])
    mr_lab = sitk.Resample(lab, grid, tx, sitk.sitkNearestNeighbor, AIR)
    mr_arr = sitk.GetArrayFromImage(mr_lab)
    mr = M.like((MR_T1[mr_arr] + rng.normal(0, 12, mr_arr.shape)).clip(0).astype(np.float32), grid)
    mr = sitk.SmoothingRecursiveGaussian(mr, 1.0)  # partial volume: a resampled label map is too sharp
    return ct, mr, ct_tumour, M.like(mr_arr == TUMOUR, grid)


def transform_errors(found: sitk.Transform, true: sitk.Transform, points) -> np.ndarray:
    """Distances (mm) between where the two transforms send `points`."""
    return np.array([np.linalg.norm(np.subtract(found.TransformPoint(p), true.TransformPoint(p))) for p in points])


def transform_error(found: sitk.Transform, true: sitk.Transform, points) -> float:
    return float(transform_errors(found, true, points).max())


def rotation_between(a: sitk.Euler3DTransform, b: sitk.Euler3DTransform) -> float:
    rel = np.array(a.GetMatrix()).reshape(3, 3) @ np.array(b.GetMatrix()).reshape(3, 3).T
    return math.degrees(math.acos(np.clip((np.trace(rel) - 1) / 2, -1, 1)))


def body_points(mr: sitk.Image, body: np.ndarray, n: int = 200) -> np.ndarray:
    idx = np.argwhere(body)[np.random.default_rng(0).choice(int(body.sum()), n)]
    return np.array([mr.TransformIndexToPhysicalPoint([int(i) for i in v[::-1]]) for v in idx])


def test_rigid_recovers_known_transform():
    true = true_transform()
    ct, mr, ct_t, mr_t = phantom(true)
    result = register_pair(ct, mr, ct_t, mr_t, settings=RegistrationSettings(stage="rigid", threads=2))
    assert result.rigid_ok and not result.notes
    assert rotation_between(result.rigid, true) < 1.0
    assert transform_error(result.rigid, true, body_points(mr, result.mr_body)) < 1.5
    assert transform_error(result.rigid, true, [M.centroid(mr_t)]) < 1.0
    qa = assess(ct, mr, result, ct_t, mr_t)
    assert qa.dice_after > qa.dice_before + 0.02 and qa.dice_after > 0.95
    assert qa.mi_after > qa.mi_before
    assert qa.tumour_dice_after > qa.tumour_dice_before
    assert qa.bone_mm_after < qa.bone_mm_before
    assert qa.passed


def test_tumour_centroids_start_a_far_pair_in_place():
    """An MR header 40 mm off: the tumour centroids bring the CT back before the metric is looked at."""
    true = true_transform(angles_deg=(0.0, 2.0, -3.0), shift=(40.0, -25.0, 0.0))
    ct, mr, ct_t, mr_t = phantom(true, mr_shift=(-40.0, 25.0, 0.0))
    body = M.mr_body(mr, mr_t)
    init = initial_transform(ct, mr, ct_t, mr_t, body)
    assert transform_error(init, true, [M.centroid(mr_t)]) < 2.0  # the centroid shift alone
    result = register_pair(ct, mr, ct_t, mr_t, settings=RegistrationSettings(stage="rigid", threads=2))
    assert result.rigid_ok
    assert rotation_between(result.rigid, true) < 1.0
    assert transform_error(result.rigid, true, body_points(mr, result.mr_body)) < 1.5


def test_bspline_keeps_a_good_rigid_and_composes():
    true = true_transform()
    ct, mr, ct_t, mr_t = phantom(true)
    result = register_pair(ct, mr, ct_t, mr_t, settings=FAST)
    assert result.bspline is not None and result.bspline_ok
    assert isinstance(result.transform, sitk.CompositeTransform)
    assert result.ct.GetSize() == mr.GetSize() and result.ct_tumour.GetSize() == mr.GetSize()
    errors = transform_errors(result.transform, true, body_points(mr, result.mr_body))
    # nothing is left to deform, and the B-spline wanders in the featureless muscle: under a voxel
    assert errors.mean() < 2.0 and errors.max() < 4.0
    assert rotation_between(result.rigid, true) < 1.0
    assert assess(ct, mr, result, ct_t, mr_t).passed


def test_bspline_mesh_follows_spacing_within_its_interval_limits():
    img = sitk.Image([128, 128, 40], sitk.sitkFloat32)
    img.SetSpacing([1.25, 1.25, 4.0])  # 160 x 160 x 160 mm
    assert bspline_mesh(img, 35.0) == [5, 5, 5]  # 4.6 intervals, rounded
    assert bspline_mesh(img, 20.0) == [5, 5, 5]  # 8, clamped to the default 5
    assert bspline_mesh(img, 20.0, max_intervals=10) == [8, 8, 8]
    assert bspline_mesh(img, 500.0) == [1, 1, 1]


def write_patient(folder: Path, synthrad: bool = False, **kw) -> Path:
    ct, mr, ct_t, mr_t = phantom(true_transform(), **kw)
    folder.mkdir(parents=True)
    sitk.WriteImage(sitk.Cast(ct, sitk.sitkInt16), str(folder / "ct.nii.gz"))
    sitk.WriteImage(mr, str(folder / ("mr.nii.gz" if synthrad else "mr_t1.nii.gz")))
    if synthrad:
        sitk.WriteImage(M.like(M.mr_body(mr), mr), str(folder / "mask.nii.gz"))
    else:
        sitk.WriteImage(ct_t, str(folder / "ct_mask.nii.gz"))
        sitk.WriteImage(mr_t, str(folder / "mr_t1_mask.nii.gz"))
    return folder


def test_both_layouts_are_found_and_read(tmp_path):
    write_patient(tmp_path / "train" / "STS_1")
    write_patient(tmp_path / "pelvis" / "1PA001", synthrad=True)
    pairs = find_pairs(tmp_path)
    assert [p.rel.as_posix() for p in pairs] == ["pelvis/1PA001", "train/STS_1"]
    synthrad, sts = (load_pair(p) for p in pairs)
    assert synthrad.body is not None and synthrad.ct_tumour is None and synthrad.mr_tumour is None
    assert sts.body is None and sts.ct_tumour is not None and sts.mr_tumour is not None
    assert find_pairs(tmp_path / "train" / "STS_1")[0].rel == Path("STS_1")  # a patient folder on its own


def test_bad_input_is_one_clear_error(tmp_path):
    folder = write_patient(tmp_path / "P1")
    (folder / "mr_t1.nii.gz").unlink()
    with pytest.raises(DataError, match=r"mr_t1\.nii\.gz: file not found"):
        load_pair(find_pairs(tmp_path)[0])
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.Image([20, 20], sitk.sitkFloat32), str(flat))
    with pytest.raises(DataError, match=r"flat\.nii\.gz: is a 2D image.*3D scalar volume is expected"):
        read_image(flat)
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"junk\.nii\.gz: not a readable image"):
        read_image(junk)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no patient folders"):
        find_pairs(empty)


def test_cli_writes_pairs_qa_and_rejects(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    write_patient(data / "train" / "STS_1")
    broken = write_patient(data / "validation" / "STS_2")
    (broken / "mr_t1.nii.gz").unlink()
    result = CliRunner().invoke(app, ["register", str(data), str(out), "--threads", "2"])
    assert result.exit_code == 1, result.output  # STS_2 has no MR: reported, the batch goes on
    assert "mr_t1.nii.gz: file not found" in result.output.replace("\n", " ")
    assert "Traceback" not in result.output
    pair = out / "train" / "STS_1"
    assert {p.name for p in pair.iterdir()} == {"ct.nii.gz", "mr.nii.gz", "ct_mask.nii.gz", "mr_mask.nii.gz",
                                                "body_mask.nii.gz", "checkerboard.png", "rigid.tfm", "transform.tfm"}
    ct, mr = sitk.ReadImage(str(pair / "ct.nii.gz")), sitk.ReadImage(str(pair / "mr.nii.gz"))
    assert ct.GetSize() == mr.GetSize() and np.allclose(ct.GetOrigin(), mr.GetOrigin(), atol=1e-3)
    assert not (out / "validation" / "STS_2").exists()
    qa = json.loads((out / "registration_qa.json").read_text())
    ok, bad = (next(r for r in qa["patients"] if r["patient"] == name) for name in ("train/STS_1", "validation/STS_2"))
    assert ok["status"] == "ok" and ok["dice_after"] > ok["dice_before"] and ok["output"] == "train/STS_1"
    assert bad["status"] == "error" and "mr_t1.nii.gz" in bad["error"]
    assert qa["summary"] == {"patients": 2, "ok": 1, "failed QA": 0, "error": 1}
    tx = sitk.ReadTransform(str(pair / "transform.tfm"))  # reads back, and maps as the result did
    assert transform_error(tx, true_transform(), [(10.0, 0.0, 0.0)]) < 2.0

    strict = CliRunner().invoke(app, ["register", str(data / "train"), str(tmp_path / "strict"), "--stage", "rigid",
                                      "--min-dice", "1.0", "--threads", "2"])
    assert strict.exit_code == 1 and "failed QA: body Dice" in strict.output.replace("\n", " ")
    assert not (tmp_path / "strict" / "STS_1").exists()
    assert (tmp_path / "strict" / "rejected" / "STS_1.png").is_file()
    rejected = json.loads((tmp_path / "strict" / "registration_qa.json").read_text())["patients"][0]
    assert rejected["status"] == "failed QA" and rejected["output"] == "rejected/STS_1.png"


def test_output_inside_data_is_refused(tmp_path):
    write_patient(tmp_path / "P1")
    result = CliRunner().invoke(app, ["register", str(tmp_path), str(tmp_path / "out")])
    assert result.exit_code == 1 and "must not lie inside the data folder" in result.output


def test_predict_registers_an_unregistered_pair_and_writes_on_the_mr_grid(tmp_path):
    """`rtgen predict` on a raw pair (the MR on its own grid, the limb moved): the CT is registered onto the
    MR first and the synthetic MR written on the MR's grid, where `rtgen evaluate` scores it against the
    raw folder; --no-register keeps the CT's grid."""
    import nibabel as nib

    runner = CliRunner()
    raw, reg = tmp_path / "raw", tmp_path / "reg"
    write_patient(raw / "P1")
    assert runner.invoke(app, ["register", str(raw), str(reg), "--threads", "2"]).exit_code == 0
    lut = tmp_path / "lut"  # the HU-to-intensity lookup trains in seconds and is a real image regression
    result = runner.invoke(app, ["train", "configs/hu_lookup_cpu.yaml", f"data.train={reg}", f"data.val={reg}",
                                 "data.size=48", "data.spacing_mm=2.5", "train.epochs=5", "train.batch_size=5",
                                 "train.lr=0.05", "--out", str(lut)])
    assert result.exit_code == 0, result.output
    synth, on_reg = tmp_path / "synth", tmp_path / "synth_reg"
    result = runner.invoke(app, ["predict", "--model", str(lut), "--patients", str(raw), "--out", str(synth)])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "registering the CT onto it" in result.output
    mr = nib.load(str(raw / "P1" / "mr_t1.nii.gz"))
    out = nib.load(str(synth / "P1.nii.gz"))
    assert out.shape == mr.shape and np.allclose(out.affine, mr.affine, atol=1e-3)
    # the same as predicting on the pair `rtgen register` wrote
    assert runner.invoke(app, ["predict", "--model", str(lut), "--patients", str(reg), "--out", str(on_reg)]).exit_code == 0
    a, b = out.get_fdata(), nib.load(str(on_reg / "P1.nii.gz")).get_fdata()
    assert a.std() > 0.05 and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    scored = runner.invoke(app, ["evaluate", "--pred", str(synth), "--ref", str(raw), "--out", str(tmp_path / "m")])
    assert scored.exit_code == 0, scored.output
    rows = (tmp_path / "m" / "per_patient.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["P1"]  # scored on the MR's grid
    # a reference folder with the MR alone scores the same
    shutil.copytree(raw, tmp_path / "mr_only")
    for name in ("ct.nii.gz", "ct_mask.nii.gz"):
        (tmp_path / "mr_only" / "P1" / name).unlink()
    alone = runner.invoke(app, ["evaluate", "--pred", str(synth), "--ref", str(tmp_path / "mr_only"), "--out", str(tmp_path / "m2")])
    assert alone.exit_code == 0, alone.output
    assert (tmp_path / "m2" / "per_patient.csv").read_text() == (tmp_path / "m" / "per_patient.csv").read_text()
    # a body mask of the MR's shape but on another grid (10 mm away) is not the MR's: left out, not misused
    shifted = mr.affine.copy()
    shifted[:3, 3] += 10.0
    nib.save(nib.Nifti1Image(np.ones(mr.shape, np.uint8), shifted), str(tmp_path / "mr_only" / "P1" / "mask.nii.gz"))
    off = runner.invoke(app, ["evaluate", "--pred", str(synth), "--ref", str(tmp_path / "mr_only"), "--out", str(tmp_path / "m3")])
    assert off.exit_code == 0, off.output
    assert (tmp_path / "m3" / "per_patient.csv").read_text() == (tmp_path / "m" / "per_patient.csv").read_text()
    kept = tmp_path / "synth_ct"
    result = runner.invoke(app, ["predict", "--model", str(lut), "--patients", str(raw / "P1"), "--out", str(kept),
                                 "--no-register"])
    assert result.exit_code == 0, result.output
    ct = nib.load(str(raw / "P1" / "ct.nii.gz"))
    assert nib.load(str(kept / "P1.nii.gz")).shape == ct.shape != mr.shape


def test_a_pair_failing_qa_can_be_kept_for_prediction(tmp_path):
    """`keep_failed` (rtgen predict's registration) writes a pair that fails QA, and still reports it failed."""
    from rtgen.data.registration import QAThresholds
    from rtgen.data.registration.run import register_patient

    write_patient(tmp_path / "raw" / "P1")
    files = find_pairs(tmp_path / "raw")[0]
    strict = QAThresholds(min_dice=1.0)  # no registration reaches a body Dice of 1
    report = register_patient(files, tmp_path / "kept", FAST, strict, keep_failed=True)
    assert report.status == "failed QA" and (tmp_path / "kept" / "P1" / "ct.nii.gz").is_file()
    assert report.output == "rejected/P1.png" and (tmp_path / "kept" / "rejected" / "P1.png").is_file()
    assert register_patient(files, tmp_path / "left", FAST, strict).status == "failed QA"
    assert not (tmp_path / "left" / "P1").exists()
