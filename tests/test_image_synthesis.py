"""CT -> MR synthesis end to end on synthetic registered pairs: train, predict, evaluate (the CLI),
the lookup baseline learning a known mapping, and the pairs that must be refused."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from ctmr_phantom import write_pair
from typer.testing import CliRunner

from rtgen.cli import app
from rtgen.core.errors import DataError
from rtgen.data.sources.image_pairs import find_pairs, load_pair
from rtgen.tasks.dose_base import SamplingConfig

runner = CliRunner()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    for i in range(3):
        write_pair(root / "train" / f"P{i}", i)
    write_pair(root / "val" / "P9", 9)
    return root


def _train(config: str, root, run, *overrides) -> None:
    result = runner.invoke(app, ["train", config, f"data.train={root / 'train'}", f"data.val={root / 'val'}",
                                 "data.size=48", "data.spacing_mm=2.5", "--out", str(run), *overrides])
    assert result.exit_code == 0, result.output


def test_diffma_trains_predicts_on_the_ct_grid_and_is_scored(pairs, tmp_path):
    run = tmp_path / "run"
    _train("configs/diffma_cpu.yaml", pairs, run, "model.hidden_size=32", "model.depth=2", "model.d_state=4", "train.epochs=1", "train.batch_size=4",
           "diffusion.embedder_pretrain_steps=3", "diffusion.val_steps=2", f"data.cache={tmp_path / 'cache'}")
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["task"] == "image_synthesis" and cfg["latent"]["scale"] > 0  # measured, kept for prediction
    assert list((tmp_path / "cache").glob("latents-train-*.npz"))
    # prediction reads only the CT: a broken MR beside it must not matter
    (pairs / "val" / "P9").joinpath("mr.nii.gz").rename(pairs / "val_mr_backup.nii.gz")
    (pairs / "val" / "P9" / "mr.nii.gz").write_bytes(b"not a nifti")
    try:
        out = tmp_path / "pred"
        result = runner.invoke(app, ["predict", "--model", str(run), "--patients", str(pairs / "val"), "--out", str(out),
                                     "--steps", "2", "--sampler", "ode"])
        assert result.exit_code == 0, result.output
    finally:
        (pairs / "val" / "P9" / "mr.nii.gz").unlink()
        (pairs / "val_mr_backup.nii.gz").rename(pairs / "val" / "P9" / "mr.nii.gz")
    img = nib.load(str(out / "P9.nii.gz"))
    ct = nib.load(str(pairs / "val" / "P9" / "ct.nii.gz"))
    assert img.shape == ct.shape and np.allclose(img.affine, ct.affine)
    vol = np.asarray(img.dataobj)
    assert np.isfinite(vol).all() and 0 <= vol.min() and vol.max() <= 1
    scored = runner.invoke(app, ["evaluate", "--pred", str(out), "--ref", str(pairs / "val"), "--out", str(tmp_path / "m")])
    assert scored.exit_code == 0, scored.output
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["n_patients"] == 1 and np.isfinite(metrics["ssim"]) and np.isfinite(metrics["psnr_body"])


def test_the_lookup_table_learns_the_hu_to_intensity_mapping(pairs, tmp_path):
    run = tmp_path / "lut"
    _train("configs/hu_lookup_cpu.yaml", pairs, run, "train.epochs=30", "train.batch_size=5", "train.lr=0.05",
           "data.flip=false")
    val = json.loads((run / "config.json").read_text())["validation"]
    assert val["psnr_body"] > 20 and val["ssim_body"] > 60  # MR is a function of HU in the phantom
    from rtgen.inference import load_predictor

    lut = load_predictor(run, "cpu").model
    soft, bone = lut(torch.tensor([[[[1040 / 2500]]]])).item(), lut(torch.tensor([[[[1900 / 2500]]]])).item()
    assert soft > bone + 0.3  # bright tissue, dark cortical bone, as the phantom's MR


def test_the_mr_zero_padding_is_neither_trained_on_nor_synthesised(tmp_path):
    for i in range(2):
        write_pair(tmp_path / "train" / f"P{i}", i, padded_slices=2)
    write_pair(tmp_path / "val" / "P9", 9, padded_slices=2)
    run = tmp_path / "lut"
    _train("configs/hu_lookup_cpu.yaml", tmp_path, run, "train.epochs=2", "train.batch_size=3", "train.lr=0.05")
    assert json.loads((run / "config.json").read_text())["training"]["train_slices"] == 2 * (5 - 2)
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", "--model", str(run), "--patients", str(tmp_path / "val"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    vol = np.asarray(nib.load(str(out / "P9.nii.gz")).dataobj)
    assert (vol[..., :2] == 0).all() and (vol[..., 2:].max(axis=(0, 1)) > 0.05).all()
    # without an MR beside the CT, every slice is synthesised
    (tmp_path / "val" / "P9" / "mr.nii.gz").unlink()
    result = runner.invoke(app, ["predict", "--model", str(run), "--patients", str(tmp_path / "val"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (np.asarray(nib.load(str(out / "P9.nii.gz")).dataobj).max(axis=(0, 1)) > 0.05).all()


def test_a_2_5d_unet_sees_the_neighbouring_ct_slices(pairs, tmp_path):
    from rtgen.inference import load_predictor
    from rtgen.tasks.image_base import pair_slices

    run = tmp_path / "unet"
    _train("configs/diffma_cpu_base.yaml", pairs, run, "data.context_slices=1", "model.channels=[4,8,8,8]",
           "train.epochs=1", "train.batch_size=8")
    pred = load_predictor(run, "cpu")
    assert json.loads((run / "config.json").read_text())["model"]["architecture"]["in_channels"] == 3
    ct = pair_slices(load_pair(find_pairs(pairs / "val")[0]), pred.task.data.spec).ct
    before = pred.task.predict_slices(pred.model, ct, "cpu", 8)
    changed = ct.copy()
    changed[3] = 1.0 - changed[3]
    after = pred.task.predict_slices(pred.model, changed, "cpu", 8)
    assert before.shape == ct.shape
    assert np.abs(after[2] - before[2]).max() > 1e-4 and np.abs(after[4] - before[4]).max() > 1e-4  # neighbours
    assert np.abs(after[0] - before[0]).max() == 0  # two slices away: unseen


def test_a_unet_with_a_soft_tissue_window_sees_fat_and_muscle_apart(pairs, tmp_path):
    from rtgen.inference import load_predictor
    from rtgen.tasks.image_base import pair_slices

    run = tmp_path / "unet"
    _train("configs/diffma_cpu_base.yaml", pairs, run, "data.ct_windows=[[-200,300]]", "model.channels=[4,8,8,8]",
           "train.epochs=1", "train.batch_size=8")
    assert json.loads((run / "config.json").read_text())["model"]["architecture"]["in_channels"] == 2
    pred = load_predictor(run, "cpu")
    ct = pair_slices(load_pair(find_pairs(pairs / "val")[0]), pred.task.data.spec).ct
    x = pred.task.inputs(ct)
    assert x.shape == (len(ct), 2, *ct.shape[1:]) and np.array_equal(x[:, 0], ct)
    assert pred.task.predict_slices(pred.model, ct, "cpu", 8).shape == ct.shape
    # a window outside the slices' HU range, or backwards, is refused before any data is read
    for bad in ("data.ct_windows=[[300,-200]]", "data.ct_windows=[[-2000,300]]"):
        result = runner.invoke(app, ["train", "configs/diffma_cpu_base.yaml", f"data.train={pairs / 'train'}",
                                     f"data.val={pairs / 'val'}", bad, "--out", str(tmp_path / "bad")])
        assert result.exit_code != 0 and "ct_windows: each (low, high)" in result.output
        assert "Traceback" not in result.output
        assert not (tmp_path / "bad").exists()


def test_a_resumed_unet_run_ends_where_an_uninterrupted_one_does(pairs, tmp_path):
    """The random flips and affines of the image tasks are reseeded every epoch: `--resume` repeats them."""
    from rtgen.core.checkpoint import load_weights
    from rtgen.engine.config import load_config
    from rtgen.engine.trainer import Trainer

    overrides = [f"data.train={pairs / 'train'}", f"data.val={pairs / 'val'}", "data.size=48", "data.spacing_mm=2.5",
                 "model.channels=[4,8,8,8]", "train.epochs=2", "train.batch_size=8", "data.rotate_deg=10"]
    straight = Trainer(load_config("configs/diffma_cpu_base.yaml", overrides), tmp_path / "a", progress=False)
    straight.fit()
    interrupted = Trainer(load_config("configs/diffma_cpu_base.yaml", overrides), tmp_path / "b", progress=False)
    interrupted.fit(stop_after=1)
    resumed = Trainer(load_config(tmp_path / "b" / "resolved_config.yaml"), tmp_path / "b", resume=True, progress=False)
    resumed.fit()
    a = load_weights(tmp_path / "a" / "last" / "model.safetensors")
    b = load_weights(tmp_path / "b" / "last" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]


def test_a_unet_shipped_with_flip_averaging_predicts_the_mean_over_its_four_flips(pairs, tmp_path):
    from rtgen.inference import load_predictor
    from rtgen.tasks.image_base import pair_slices

    run = tmp_path / "unet"
    _train("configs/diffma_cpu_base.yaml", pairs, run, "predict.flip_average=true", "model.channels=[4,8,8,8]",
           "train.epochs=1", "train.batch_size=8")
    assert json.loads((run / "config.json").read_text())["predict"] == {"flip_average": True}
    pred = load_predictor(run, "cpu")
    with torch.no_grad():  # one epoch leaves the output mostly below 0, where the clamp hides any flip
        pred.model.head.bias += 0.5
    ct = pair_slices(load_pair(find_pairs(pairs / "val")[0]), pred.task.data.spec).ct
    averaged = pred.task.predict_slices(pred.model, ct, "cpu", 8)
    by_hand = np.mean([np.flip(pred.task.predict_once(pred.model, np.ascontiguousarray(np.flip(ct, axes)), "cpu", 8), axes)
                       for axes in ((), (-1,), (-2,), (-1, -2))], axis=0)
    np.testing.assert_allclose(averaged, by_hand, atol=1e-6)
    assert np.abs(averaged - pred.task.predict_once(pred.model, ct, "cpu", 8)).max() > 1e-4  # a flip changes it


def test_a_pair_on_two_grids_is_refused_with_a_pointer_to_register(tmp_path):
    write_pair(tmp_path / "X", 0, mr_affine=np.diag([2.0, 2.0, 3.0, 1.0]))
    with pytest.raises(DataError, match="rtgen register"):
        load_pair(tmp_path / "X")


def test_site_folders_are_found_and_a_folder_without_pairs_is_an_error(tmp_path):
    write_pair(tmp_path / "pelvis" / "1PA001", 0)
    write_pair(tmp_path / "brain" / "1BA001", 1)
    assert [p.name for p in find_pairs(tmp_path)] == ["1BA001", "1PA001"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no patient folders"):
        find_pairs(tmp_path / "empty")


def test_diffma_refining_a_base_starts_from_the_base_and_carries_it(pairs, tmp_path):
    from rtgen.core.checkpoint import read_config
    from rtgen.data.sources.image_pairs import find_pairs
    from rtgen.tasks import task_from_checkpoint
    from rtgen.tasks.image_base import pair_slices

    unet = tmp_path / "lut"  # any image regression: the lookup table learns a usable base fastest
    _train("configs/hu_lookup_cpu.yaml", pairs, unet, "train.epochs=10", "train.batch_size=5", "train.lr=0.05")
    run = tmp_path / "refiner"
    tiny = ["model.hidden_size=32", "model.depth=2", "model.d_state=4", "train.epochs=1", "train.batch_size=4",
            "diffusion.embedder_pretrain_steps=2", "diffusion.val_steps=2"]
    _train("configs/diffma_cpu_refiner.yaml", pairs, run, *tiny, f"base.run={unet}", f"data.cache={tmp_path / 'cache'}")
    assert (run / "base" / "config.json").is_file() and list((tmp_path / "cache").glob("base-*.npz"))
    moved = tmp_path / "moved"
    run.rename(moved)  # the copied base travels with the run folder
    task = task_from_checkpoint(read_config(moved / "config.json"), str(moved / "config.json"))
    assert task.base.run == str(moved / "base")
    ct = pair_slices(load_pair(find_pairs(pairs / "val")[0]), task.data.spec).ct
    base = task.base_slices(ct)
    assert base.std() > 0.05  # a real image, not a constant
    task.base.flip_average = True  # a pointwise lookup gives the same MR for every flip of the slice
    assert np.allclose(task.base_slices(ct), base, atol=1e-6)
    task.base.flip_average = False
    # an untrained network outputs zero: the x0 prediction is the base's latent at every step, so the
    # sample is the base's latent and the decoded MR the base itself
    fresh = task.build_model()
    out = task.predict_slices(fresh, ct, "cpu", 8, None)
    assert out.shape == ct.shape and np.abs(out - base).max() < 1e-5
    trained = task.load_model(moved / "model.safetensors")
    refined = task.predict_slices(trained, ct, "cpu", 8, None)
    assert np.abs(refined - base).max() > 1e-4
    # a run written before the renames (its base in `prior/` under a `prior` section, `latent.vae`) is
    # read under today's names (rtgen.core.migration) and predicts the same
    old = tmp_path / "old"
    shutil.copytree(moved, old, ignore=shutil.ignore_patterns("last"))
    (old / "base").rename(old / "prior")
    config = json.loads((old / "config.json").read_text())
    config["prior"] = config.pop("base")
    config["latent"]["vae"] = config["latent"].pop("autoencoder")
    config["latent"]["vae_run"] = config["latent"].pop("autoencoder_run")
    (old / "config.json").write_text(json.dumps(config))
    task = task_from_checkpoint(read_config(old / "config.json"), str(old / "config.json"))
    assert task.base.run == str(old / "prior") and task.latent.autoencoder == "taef2"
    np.testing.assert_array_equal(task.predict_slices(task.load_model(old / "model.safetensors"), ct, "cpu", 8, None),
                                  refined)
    # a base that is not an image regression, or a parameterisation that cannot carry it, is refused
    for bad, match in ((f"base.run={moved}", "not an image_regression"),
                       ("diffusion.prediction=epsilon", "needs diffusion.prediction: sample"),
                       ("diffusion.val_sampler=ode", "needs base.run and diffusion.val_sampler: ddim"),
                       ("data.context_slices=1", "one CT slice at a time"),
                       ("data.ct_windows=[[-200,300]]", "through its autoencoder")):
        result = runner.invoke(app, ["train", "configs/diffma_cpu_refiner.yaml", f"data.train={pairs / 'train'}",
                                     f"data.val={pairs / 'val'}", "data.size=48", "data.spacing_mm=2.5", *tiny,
                                     f"base.run={unet}", bad, "--out", str(tmp_path / "bad")])
        assert result.exit_code != 0 and match in result.output and "Traceback" not in result.output
        assert not (tmp_path / "bad" / "model.safetensors").exists()


def test_out_of_fold_bases_come_from_a_run_that_did_not_see_the_patient(pairs, tmp_path):
    """`base.train_runs`: each training patient's base comes from the first run not trained on it."""
    import shutil

    from rtgen.core.errors import ConfigError

    folds = {"A": ["P0"], "B": ["P1", "P2"]}
    runs = {}
    for fold, members in folds.items():
        for m in members:
            shutil.copytree(pairs / "train" / m, tmp_path / fold / m)
        runs[fold] = tmp_path / f"lut_{fold}"
        result = runner.invoke(app, ["train", "configs/hu_lookup_cpu.yaml", f"data.train={tmp_path / fold}",
                                     f"data.val={pairs / 'val'}", "data.size=48", "data.spacing_mm=2.5",
                                     "train.epochs=3", "train.batch_size=5", "train.lr=0.05", "--out", str(runs[fold])])
        assert result.exit_code == 0, result.output
    tiny = ["model.hidden_size=32", "model.depth=2", "model.d_state=4", "train.epochs=1", "train.batch_size=4",
            "diffusion.embedder_pretrain_steps=2", "diffusion.val_steps=2", f"data.cache={tmp_path / 'cache'}"]
    _train("configs/diffma_cpu_refiner.yaml", pairs, tmp_path / "oof", *tiny, f"base.run={runs['A']}",
           f"base.train_runs=[{runs['A']},{runs['B']}]")
    from rtgen.engine.config import load_config

    task = load_config(tmp_path / "oof" / "resolved_config.yaml").task
    assert task._fold_run("P0") == str(runs["B"]) and task._fold_run("P1") == str(runs["A"])
    task.base.train_runs = (str(runs["A"]),)  # A saw P0 and is the only run: refused, naming the patient
    with pytest.raises(ConfigError, match="every run was trained on patient P0"):
        task._fold_run("P0")


def test_predict_without_a_model_picks_the_shipped_ct_to_mr_model_for_image_pairs(tmp_path):
    """A folder of CT/MR patients gets the shipped CT -> MR model, not the dose model's error."""
    from pathlib import Path

    from rtgen.data.examples import example_patients_dir
    from rtgen.data.sources.image_pairs import holds_image_pairs

    data = Path(__file__).parent / "data"
    assert holds_image_pairs(data) and holds_image_pairs(data / "sts_018")
    assert not holds_image_pairs(example_patients_dir())  # OpenKBP CSV patients
    result = runner.invoke(app, ["predict", "--patients", str(data), "--out", str(tmp_path / "synth")])
    assert result.exit_code == 0, result.output
    assert "the shipped default, unet_sts" in result.output
    mr = nib.load(tmp_path / "synth" / "sts_018.nii.gz").get_fdata()
    assert mr.shape == load_pair(data / "sts_018").ct.shape and 0 <= mr.min() and mr.max() <= 1 and mr.max() > 0.5


def test_the_random_affine_moves_image_and_masks_together_and_is_refused_for_latents(pairs, tmp_path):
    """`data.rotate_deg` / `data.scale`: every array of a training item gets the same rotation and
    zoom (masks by nearest neighbour, still binary), drawn anew per item; a latent model refuses them."""
    from rtgen.engine.config import load_config

    cfg = load_config("configs/diffma_cpu_base.yaml", [f"data.train={pairs / 'train'}", "data.size=48",
                                                            "data.spacing_mm=2.5", "data.rotate_deg=30",
                                                            "data.scale=0.2", "data.flip=false"])
    ds = cfg.task.train_dataset(0, progress=False)
    plain = load_config("configs/diffma_cpu_base.yaml", [f"data.train={pairs / 'train'}", "data.size=48",
                                                              "data.spacing_mm=2.5", "data.flip=false"])
    reference = plain.task.train_dataset(0, progress=False)
    i = int(np.argmax([a.sum() for a in reference.arrays["body"]]))  # a slice with much body in it
    items = [ds[i] for _ in range(20)]
    original = reference[i]
    assert all(type(v) is torch.Tensor for v in items[0].values())  # plain tensors, not MONAI's MetaTensor
    moved = [it for it in items if not torch.equal(it["body"], original["body"])]
    assert 4 <= len(moved) <= 16  # the affine runs on about half of the items (prob 0.5)
    for it in items:
        assert set(torch.unique(it["body"]).tolist()) <= {0.0, 1.0} and set(torch.unique(it["fov"]).tolist()) <= {0.0, 1.0}
        assert it["ct"].shape == original["ct"].shape and it["mr"].shape == original["mr"].shape
        # the CT's body and the body mask move as one: the CT stays air (0) far outside the moved mask
        outside = torch.nn.functional.max_pool2d(it["body"][None], 5, 1, 2)[0] == 0
        assert it["ct"][outside].max() < 0.2 + original["ct"][original["body"] == 0].max()
    with pytest.raises(Exception, match="rotate_deg"):
        load_config("configs/diffma_cpu.yaml", ["data.rotate_deg=10"])


def test_predict_tta_and_samples_go_to_the_models_that_have_them(pairs, tmp_path):
    """`rtgen predict --tta` on a CT -> MR regression writes the mean over its 4 in-plane flips (as a
    run with predict.flip_average would); on DiffMa, which has no flip average, it is one clear error.
    `--samples K` is the reverse: DiffMa averages K samples, the deterministic regression refuses it."""
    from rtgen.inference import load_predictor

    run = tmp_path / "unet"
    _train("configs/diffma_cpu_base.yaml", pairs, run, "model.channels=[4,8,8,8]", "train.epochs=1",
           "train.batch_size=8")
    from rtgen.core.checkpoint import load_weights, save_weights

    weights = load_weights(run / "model.safetensors")  # one epoch leaves the output mostly below 0, where the
    weights["head.bias"] += 0.5  # clamp hides any flip: lift it
    save_weights(run / "model.safetensors", weights)
    out = {}
    for name, flag in (("once", "--no-tta"), ("tta", "--tta")):
        r = runner.invoke(app, ["predict", "--model", str(run), "--patients", str(pairs / "val"), "--out",
                                str(tmp_path / name), flag])
        assert r.exit_code == 0, r.output
        out[name] = np.asarray(nib.load(str(tmp_path / name / "P9.nii.gz")).dataobj)
    pred = load_predictor(run, "cpu")
    pred.task.predict.flip_average = True
    want = pred.task.predict_pair(pred.model, load_pair(find_pairs(pairs / "val")[0]), "cpu", 32)
    np.testing.assert_allclose(out["tta"], want, atol=1e-5)
    assert np.abs(out["tta"] - out["once"]).max() > 1e-4
    diffma = tmp_path / "diffma"
    _train("configs/diffma_cpu.yaml", pairs, diffma, "model.hidden_size=16", "model.depth=1", "model.d_state=4",
           "train.epochs=1", "train.batch_size=4", "diffusion.embedder_pretrain_steps=1", "diffusion.val_steps=1")
    r = runner.invoke(app, ["predict", "--model", str(diffma), "--patients", str(pairs / "val"), "--out",
                            str(tmp_path / "d"), "--tta"])
    assert r.exit_code != 0 and "--tta" in r.output and "no flip averaging" in r.output
    assert not (tmp_path / "d").exists()
    r = runner.invoke(app, ["predict", "--model", str(run), "--patients", str(pairs / "val"), "--out",
                            str(tmp_path / "u"), "--samples", "2"])
    assert r.exit_code != 0 and "--samples 2" in r.output and "deterministic" in r.output
    assert not (tmp_path / "u").exists()
    # --samples K on DiffMa: the mean of K samples, so its seed-to-seed spread shrinks (about 1/sqrt(K))
    pred = load_predictor(diffma, "cpu")
    ct = np.random.default_rng(0).random((2, 48, 48), dtype=np.float32)

    def spread(k: int) -> float:
        draws = [pred.task.predict_slices(pred.model, ct, "cpu", 2, SamplingConfig("ode", 1, k, seed))
                 for seed in range(4)]
        return float(np.std(draws, axis=0).mean())

    assert spread(4) < 0.75 * spread(1)
