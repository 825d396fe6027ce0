"""The gradient-boosted dose model: registered like any model, fitted in one call by `rtgen train`,
saved as LightGBM text (never a pickle) and reloaded exactly, predicting through `rtgen predict`."""

import json
import shutil

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from rtgen.cli import app
from rtgen.core.errors import RtgenError
from rtgen.core.registry import MODELS
from rtgen.core.structures import OARS
from rtgen.data.transforms.voxel_features import (
    VoxelFeatureConfig,
    feature_matrix,
    feature_names,
    feature_volumes,
    training_voxels,
)
from rtgen.inference import load_predictor
from rtgen.models.boosted import BoostedDose, BoostedDoseConfig

runner = CliRunner()
NO_BEAMS = VoxelFeatureConfig(beams=False, samples_per_patient=2000)


def test_booster_text_round_trip_is_exact():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 5)).astype(np.float32)
    y = (X[:, 0] * 3 + np.sin(X[:, 1]) * 10 + 20).astype(np.float32)
    X[rng.random(X.shape) < 0.05] = np.nan  # missing values travel through the text format too
    model = BoostedDose(BoostedDoseConfig(n_features=5, n_estimators=30, num_leaves=15, min_data_in_leaf=10))
    model.fit(X[:2500], y[:2500], X[2500:], y[2500:])
    again = BoostedDose(model.config).load_text(model.to_text())
    np.testing.assert_array_equal(model.predict(X), again.predict(X))
    assert again.n_parameters > 0
    with pytest.raises(RtgenError, match="uses 5 features, its config.json says 6"):
        BoostedDose(BoostedDoseConfig(n_features=6)).load_text(model.to_text())
    with pytest.raises(RtgenError, match="not a LightGBM text model"):
        BoostedDose(model.config).load_text("tree\nnonsense")


def test_voxel_features_and_sampling(patient):
    volumes = feature_volumes(patient, NO_BEAMS)
    assert list(volumes) == feature_names(NO_BEAMS)
    for name, v in volumes.items():
        assert v.shape == patient.grid and v.dtype == np.float32, name
    inside = patient.possible_dose_mask
    missing = {"PTV56_distance_mm", "inplane_ptv_distance_mm"}  # no PTV56; slices without a target: NaN = missing
    assert all(np.isfinite(volumes[n][inside]).all() for n in volumes if n not in missing)
    assert np.isnan(volumes["inplane_ptv_distance_mm"][inside]).any()
    ptv = patient.structures["PTV70"]
    assert (volumes["PTV70_distance_mm"][ptv] <= 0).all() and volumes["rx_gy"][ptv].max() == 70
    assert (volumes["axial_offset_mm"][ptv] == 0).all() and volumes["axial_offset_mm"].max() > 0
    idx = training_voxels(patient, NO_BEAMS, seed=0)
    assert len(idx) == 2000 and inside.ravel()[idx].all()
    np.testing.assert_array_equal(idx, training_voxels(patient, NO_BEAMS, seed=0))  # seeded


def test_oar_distance_features(patient):
    """`oar_distances` adds each OAR's signed distance after the masks (negative inside, NaN for an
    organ the patient lacks); without it the features are those older models learned."""
    config = VoxelFeatureConfig(beams=False, oar_distances=True)
    names = feature_names(config)
    base = feature_names(NO_BEAMS)
    masks_end = base.index("Mandible_mask") + 1
    assert names == base[:masks_end] + [f"{o}_distance_mm" for o in OARS] + base[masks_end:]
    volumes = feature_volumes(patient, config)
    assert list(volumes) == names
    for o in OARS:
        d = volumes[f"{o}_distance_mm"]
        if o not in patient.structures or not patient.structures[o].any():
            assert np.isnan(d).all(), o
            continue
        mask = patient.structures[o]
        assert (d[mask] <= 0).all() and (d[~mask] > 0).all(), o
        # a voxel's distance is at most its distance to any one organ voxel
        near = np.argwhere(mask)[0]
        far = np.unravel_index(np.nanargmax(d), d.shape)
        straight = float(np.linalg.norm((np.subtract(far, near)) * np.asarray(patient.spacing)))
        assert d[far] <= straight + 1e-3 and d.max() <= 150.0, o
    assert len([o for o in OARS if np.isfinite(volumes[f"{o}_distance_mm"]).any()]) >= 2
    assert config.key() != VoxelFeatureConfig(beams=False).key()  # cached training voxels are kept apart


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, examples_dir):
    root = tmp_path_factory.mktemp("boosted")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "lightgbm_dose", "n_estimators": 25, "num_leaves": 15, "min_data_in_leaf": 20},
        "voxels": {"beams": False, "samples_per_patient": 2000},
        "data": {"train": str(examples_dir), "val": str(examples_dir), "val_samples_per_patient": 500,
                 "cache": str(root / "cache"), "feature_workers": 1},
        "calibration": {"folds": 2, "min_cases": 2},  # 2 patients: each fold's booster predicts the other
        "train": {"seed": 0}}))
    r = runner.invoke(app, ["train", str(config), "--out", str(root / "run")])
    assert r.exit_code == 0, r.output
    return root / "run"


def test_train_writes_a_run_without_pickles(tiny_run):
    assert sorted(p.name for p in tiny_run.iterdir()) == ["MODEL_CARD.md", "config.json", "model.fold0.txt",
                                                          "model.fold1.txt", "model.txt", "resolved_config.yaml"]
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert cfg["task"] == "dose_boosted" and cfg["model"]["name"] == "lightgbm_dose"
    assert cfg["training"]["train_voxels"] == 4000 and cfg["validation"]["dose_score"] > 0
    assert {"PTV70", "SpinalCord"} <= set(cfg["dvh_calibration"]["coefficients"])
    assert cfg["validation"]["uncalibrated_dvh_score"] > 0 and cfg["training"]["calibration_seconds"] > 0
    assert cfg["ensemble_members"] == 2 and "fold boosters" in (tiny_run / "MODEL_CARD.md").read_text()
    assert "gradient-boosted" in (tiny_run / "MODEL_CARD.md").read_text()


def test_predict_cli_reloads_the_model_exactly(tiny_run, tmp_path, examples_dir, patient):
    predictor = load_predictor(tiny_run, "cpu")
    dose = predictor.predict(patient)
    assert dose.shape == patient.grid and (dose[~patient.possible_dose_mask] == 0).all() and dose.min() >= 0
    calibration = predictor.task.dvh_calibration  # predictions are the booster's, reshaped by the calibration
    X = feature_matrix(patient, predictor.task.voxels, patient.possible_dose_mask)
    raw = predictor.task._assemble(patient, predictor.model.predict(X))
    np.testing.assert_array_equal(dose, calibration.apply(raw, patient.structures, patient.voxel_volume_mm3))
    assert not np.array_equal(dose, raw)
    r = runner.invoke(app, ["predict", "--model", str(tiny_run), "--patients", str(examples_dir / "pt_204"),
                            "--out", str(tmp_path / "pred"), "--format", "nifti"])
    assert r.exit_code == 0, r.output
    import nibabel as nib

    np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "pred" / "pt_204.nii.gz")).dataobj), dose)


def test_a_checkpoint_of_another_model_is_named(tiny_run, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_run, mixed)
    cfg = json.loads((mixed / "config.json").read_text())
    cfg["model"] = {"name": "mamba_unet_v2", "architecture": {}}
    cfg.pop("task")
    (mixed / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RtgenError, match="belong to another model"):
        load_predictor(mixed / "model.txt", "cpu")


def test_the_ensemble_is_the_mean_of_its_boosters_and_a_missing_one_is_named(tiny_run, tmp_path, patient):
    predictor = load_predictor(tiny_run, "cpu")
    model = predictor.model
    assert len(model.members) == 2
    X = feature_matrix(patient, predictor.task.voxels, patient.possible_dose_mask)[:500]
    alone = [BoostedDose(model.config).load_text(m.to_text()).predict(X) for m in [model, *model.members]]
    np.testing.assert_allclose(model.predict(X), np.mean(alone, axis=0), rtol=1e-6, atol=1e-5)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_run, broken)
    (broken / "model.fold1.txt").unlink()
    with pytest.raises(RtgenError, match="model.fold1.txt: cannot be read"):
        load_predictor(broken, "cpu")


def test_boosted_model_is_registered_for_its_task():
    entry = MODELS.get("lightgbm_dose")
    assert entry.task == "dose_boosted"


def test_a_model_trained_on_other_features_is_refused(tiny_run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    cfg = json.loads((old / "config.json").read_text())
    cfg["feature_names"] = cfg["feature_names"][:-1]  # as if an older rtgen had computed one feature less
    (old / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RtgenError, match="trained on features this version of rtgen does not compute"):
        load_predictor(old, "cpu")
