"""The 3D refiner of a boosted dose: trained by the gradient trainer on patches, its run folder holds
everything prediction needs (the base booster included), and its DVH loss is differentiable."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from rtgen.cli import app
from rtgen.core.errors import ConfigError
from rtgen.engine.config import from_dict
from rtgen.inference import load_predictor
from rtgen.tasks.dose_refine import STRUCTURES, draw_patch, dvh_loss, input_names

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, examples_dir):
    root = tmp_path_factory.mktemp("refiner")
    (root / "boost.yaml").write_text(yaml.safe_dump({
        "model": {"name": "lightgbm_dose", "n_estimators": 10, "num_leaves": 15, "min_data_in_leaf": 20},
        "voxels": {"beams": False, "samples_per_patient": 1000},
        "data": {"train": str(examples_dir), "val": str(examples_dir), "val_samples_per_patient": 200,
                 "feature_workers": 1},
        "train": {"seed": 0}}))
    r = runner.invoke(app, ["train", str(root / "boost.yaml"), "--out", str(root / "base")])
    assert r.exit_code == 0, r.output
    (root / "refine.yaml").write_text(yaml.safe_dump({
        "model": {"name": "dose_refiner_3d", "channels": [4, 8]},
        "base": {"run": str(root / "base")},
        "data": {"train": str(examples_dir), "val": str(examples_dir), "patch": 32, "patches_per_patient": 1,
                 "cache": str(root / "cache"), "feature_workers": 1},
        "loss": {"dvh_weight": 0.5},
        "train": {"seed": 0, "epochs": 1, "batch_size": 2, "warmup_steps": 0, "val_batch_size": 2}}))
    r = runner.invoke(app, ["train", str(root / "refine.yaml"), "--out", str(root / "refiner")])
    assert r.exit_code == 0, r.output
    return root


def test_refiner_run_is_self_contained_and_predicts_inside_the_mask(runs, patient):
    cfg = json.loads((runs / "refiner" / "config.json").read_text())
    assert cfg["task"] == "dose_refine" and cfg["model"]["architecture"]["in_channels"] == len(input_names(False))
    assert cfg["base_model"]["task"] == "dose_boosted" and cfg["tiling"]["patch"] == 32
    v = cfg["validation"]
    assert np.isfinite([v["dose_score"], v["dvh_score"], v["base_dose_score"]]).all()
    cached = sorted((runs / "cache").rglob("*.npz"))
    assert len(cached) == 2
    with np.load(cached[0]) as z:
        assert z["inputs"].dtype == np.float16 and z["inputs"].shape[0] == len(input_names(False))
    # the run folder alone predicts: move it away and remove the base run it was trained on
    moved = runs / "moved"
    shutil.copytree(runs / "refiner", moved)
    shutil.rmtree(runs / "base")
    predictor = load_predictor(moved, device="cpu")
    dose = predictor.predict(patient)
    assert dose.shape == patient.grid and dose.dtype == np.float32
    assert (dose >= 0).all() and not dose[~patient.possible_dose_mask].any()
    assert dose[patient.possible_dose_mask].max() > 1.0


def test_dvh_loss_is_zero_at_the_reference_and_differentiable():
    torch.manual_seed(0)
    ref = torch.rand(2, 1, 8, 8, 8)
    labels = torch.zeros(2, 8, 8, 8, dtype=torch.int32)
    labels[:, 2:6, 2:6, 2:6] |= 1 << STRUCTURES.index("PTV70")
    labels[0, :, :4] |= 1 << STRUCTURES.index("Brainstem")
    assert float(dvh_loss(ref.clone(), ref, labels, min_voxels=8)) == 0.0
    # a permutation inside a structure leaves its DVH unchanged: the term only sees dose distributions
    shuffled = ref.clone()
    shuffled[0, 0, 2:6, 2:6, 2:6] = shuffled[0, 0, 2:6, 2:6, 2:6].flip(0)
    labels_ptv = labels & (1 << STRUCTURES.index("PTV70"))
    assert float(dvh_loss(shuffled, ref, labels_ptv, min_voxels=8)) == pytest.approx(0.0, abs=1e-7)
    pred = (ref + 0.1 * torch.randn_like(ref)).requires_grad_(True)
    loss = dvh_loss(pred, ref, labels, min_voxels=8)
    loss.backward()
    assert loss.item() > 0 and pred.grad is not None and pred.grad.abs().sum() > 0
    assert not pred.grad[labels.unsqueeze(1) == 0].any()  # only structure voxels get a gradient
    empty = torch.zeros_like(labels)
    p2 = ref.clone().requires_grad_(True)
    zero = dvh_loss(p2, ref, empty)
    zero.backward()  # no structure in the patch: 0, still attached to the graph
    assert zero.item() == 0.0


def test_patches_are_padded_and_flips_swap_the_parotids():
    names = input_names(False)
    right_ch, left_ch = names.index("RightParotid_mask"), names.index("LeftParotid_mask")
    inputs = np.zeros((len(names), 20, 32, 10), np.float16)
    inputs[right_ch, :, :5] = 1  # the right parotid at low indices of the left-right axis
    case = {"inputs": inputs, "dose": np.ones((20, 32, 10), np.float16), "labels": np.zeros((20, 32, 10), np.uint16)}
    seen = set()
    for seed in range(16):
        p = draw_patch(case, 32, np.random.default_rng(seed), flip=True)
        assert p["x"].shape == (len(names), 32, 32, 32) and p["labels"].dtype == torch.int32
        assert float(p["dose"].sum()) == 20 * 32 * 10  # the whole crop, zero padded to the patch
        right, left = p["x"][right_ch], p["x"][left_ch]
        if right.any():  # not flipped
            assert not left.any() and right[:, :5].any()
        else:  # flipped: the same organ is now on the other side, and called the left parotid
            assert left[:, 27:].any() and not left[:, :27].any()
        seen.add(bool(right.any()))
    assert seen == {True, False}


def test_target_fraction_centres_patches_on_a_ptv():
    """A small PTV in a corner of a large crop: uniform 16^3 cubes seldom hold it, target-centred ones
    always do."""
    names = input_names(False)
    shape = (64, 64, 64)
    labels = np.zeros(shape, np.uint16)
    labels[2:6, 2:6, 2:6] = 1 << STRUCTURES.index("PTV70")
    case = {"inputs": np.zeros((len(names), *shape), np.float16), "dose": np.zeros(shape, np.float16), "labels": labels}
    hits = {f: sum(bool(draw_patch(case, 16, np.random.default_rng(s), False, f)["labels"].any()) for s in range(40))
            for f in (0.0, 1.0)}
    assert hits[1.0] == 40 and hits[0.0] < 10


def test_config_errors_name_the_base_run(tmp_path, examples_dir):
    raw = {"model": {"name": "dose_refiner_3d"}, "data": {"train": str(examples_dir)}}
    with pytest.raises(ConfigError, match="base.run is not set"):
        from_dict(raw)
    with pytest.raises(ConfigError, match="not a fitted dose_boosted run"):
        from_dict({**raw, "base": {"run": str(tmp_path)}})


def test_patch_draws_are_a_function_of_the_epoch_seed_and_the_index():
    """The trainer reseeds the patch dataset every epoch: the same seed draws the same patches in any
    order (so `--resume` and loader workers repeat them), another seed draws others."""
    from rtgen.tasks.dose_refine import PatchDataset

    rng = np.random.default_rng(0)
    case = {"inputs": rng.random((2, 20, 20, 20), dtype=np.float32), "dose": rng.random((20, 20, 20), dtype=np.float32),
            "labels": np.zeros((20, 20, 20), np.int32)}
    ds = PatchDataset([case], patch=8, per_patient=4, flip=False, seed=5)
    first = [ds[i]["x"] for i in range(4)]
    assert all(torch.equal(ds[i]["x"], first[i]) for i in reversed(range(4)))
    ds.set_random_state(6)
    assert not all(torch.equal(ds[i]["x"], first[i]) for i in range(4))
    ds.set_random_state(5)
    assert all(torch.equal(ds[i]["x"], first[i]) for i in range(4))
