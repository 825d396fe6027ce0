import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from rtgen.cli import app
from rtgen.core.checkpoint import load_state, load_weights, save_state
from rtgen.core.errors import ConfigError, RtgenError
from rtgen.engine.config import load_config
from rtgen.engine.trainer import Trainer, warmup_cosine
from rtgen.inference.predictor import load_predictor
from rtgen.models import build_model, count_parameters
from rtgen.tasks.dose_base import masked_smooth_l1

EXAMPLES = Path(__file__).resolve().parents[1] / "rtgen" / "examples" / "openkbp"
TINY = {
    "model": {"name": "mamba_unet_v2", "channels": [8, 16, 16, 32], "mixer_from_level": 2, "d_state": 8, "headdim": 16},
    "features": {"psdm_structures": ["PTV70", "Brainstem"]},
    "data": {"train": str(EXAMPLES), "val": str(EXAMPLES), "feature_workers": 0},
    "train": {"epochs": 2, "batch_size": 4, "warmup_steps": 2, "max_steps_per_epoch": 3, "ema_decay": 0.9,
              "lr": 1.0e-3, "seed": 3},
}


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.mark.parametrize("name", ["mamba_unet_v2", "unet", "transformer_unet"])
def test_models_map_features_to_one_dose_channel(name):
    model = build_model(name, in_channels=5, channels=(8, 16, 16, 32), mixer_from_level=1, d_state=8, headdim=16)
    assert model(torch.randn(2, 5, 64, 64)).shape == (2, 1, 64, 64)


def test_mixers_change_the_parameter_count():
    counts = {n: count_parameters(build_model(n, in_channels=20)) for n in ("unet", "transformer_unet", "mamba_unet_v2")}
    assert counts["unet"] < counts["transformer_unet"] and counts["unet"] < counts["mamba_unet_v2"]
    with pytest.raises(ConfigError, match="model.downsample: Input should be 'maxpool' or 'conv'"):
        build_model("mamba_unet_v2", downsample="avgpool")
    with pytest.raises(ConfigError, match="model.mixer is fixed to 'none' for 'unet'"):
        build_model("unet", mixer="attention")


def test_masked_loss_and_schedule():
    pred, target = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    target[..., 2:, :] = 100.0  # outside the mask: ignored
    assert masked_smooth_l1(pred, target, mask).item() == pytest.approx(0.5)
    f = warmup_cosine(10, 110)
    assert f(0) == pytest.approx(0.1) and f(9) == 1.0 and f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0)


def test_ema_warms_up():
    from rtgen.engine.trainer import ema_with_warmup

    avg, cur = [torch.zeros(3)], [torch.ones(3)]
    update = ema_with_warmup(0.999)
    update(avg, cur, torch.tensor(0))  # first update: decay 0.1 -> mostly the current weights
    assert torch.allclose(avg[0], torch.full((3,), 0.9))
    for n in range(1, 2000):
        update(avg, cur, torch.tensor(n))
    assert torch.allclose(avg[0], torch.ones(3), atol=1e-3)


def test_ema_model_tracks_batchnorm_statistics(tmp_path, tiny_config):
    """The EMA copy must average BatchNorm running statistics too, not keep the initial ones."""
    t = Trainer(load_config(tiny_config, ["train.epochs=1"]), tmp_path / "run", progress=False)
    t.fit()
    bn = [k for k in t.model.state_dict() if k.endswith("running_var")]
    ema_state = t.ema.module.state_dict()
    assert bn and all(not torch.allclose(ema_state[k], torch.ones_like(ema_state[k])) for k in bn)


def test_channels_last_and_cpu_amp_train_and_save_plain_weights(tmp_path, tiny_config):
    """`train.channels_last` puts the conv weights in channels-last order for training (with bf16
    autocast here); the checkpoint still holds contiguous weights that load into a plain model."""
    cfg = load_config(tiny_config, ["train.epochs=1", "train.channels_last=true", "train.cpu_amp=true"])
    t = Trainer(cfg, tmp_path / "run", progress=False)
    t.fit()
    convs = [m for m in t.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    predictor = load_predictor(tmp_path / "run")
    trained = {k: v.contiguous() for k, v in t.eval_model().state_dict().items()}
    for k, v in predictor.model.state_dict().items():
        assert torch.equal(v, trained[k]), k


def test_config_overrides_and_errors(tiny_config):
    cfg = load_config(tiny_config, ["train.lr=0.5", "model.channels=[4,8,8,16]"])
    assert cfg.train.lr == 0.5 and cfg.task.architecture.channels == (4, 8, 8, 16)
    assert cfg.features.n_channels == 10 + 2 and cfg.task.architecture.in_channels == 12
    with pytest.raises(ConfigError, match=r"train.learning_rate: unknown key"):
        load_config(tiny_config, ["train.learning_rate=1"])
    with pytest.raises(ConfigError, match="unknown model 'resnet'; known: .*mamba_unet_v2"):
        load_config(tiny_config, ["model.name=resnet"])
    with pytest.raises(RtgenError, match="not of the form"):
        load_config(tiny_config, ["epochs"])
    assert not load_config(tiny_config, ["train.init="]).train.init  # an empty override: train from scratch


def test_training_state_round_trip_without_pickle(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    import random

    state = {"optimizer": opt.state_dict(), "rng": {"torch": torch.get_rng_state(), "numpy": list(np.random.get_state()),
                                                    "python": random.getstate()}, "best": 1.5, "history": [{"a": 1}]}
    save_state(tmp_path, state)
    back = load_state(tmp_path)
    assert back["best"] == 1.5 and back["history"] == [{"a": 1}]
    assert torch.equal(back["rng"]["torch"], state["rng"]["torch"])
    assert back["rng"]["python"] == state["rng"]["python"]
    opt2 = torch.optim.AdamW(model.parameters())
    opt2.load_state_dict(back["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert "pickle" not in (tmp_path / "training_state.json").read_text()


def test_train_writes_a_complete_run(tmp_path, tiny_config):
    r = CliRunner().invoke(app, ["train", str(tiny_config), "--out", str(tmp_path / "run"), "train.epochs=1"])
    assert r.exit_code == 0, r.output
    run = tmp_path / "run"
    for f in ("model.safetensors", "config.json", "MODEL_CARD.md", "log.csv", "resolved_config.yaml",
              "last/model.safetensors", "last/training_state.safetensors", "last/training_state.json"):
        assert (run / f).is_file(), f
    assert list((run / "figures").glob("dvh_epoch001.png"))
    if importlib.util.find_spec("tensorboard"):  # an optional extra: events only where it is installed
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["name"] == "mamba_unet_v2" and cfg["training"]["train_patients"] == 2
    assert cfg["validation"]["dose_score"] > 0 and cfg["features"]["psdm_structures"] == ["PTV70", "Brainstem"]
    assert "Dose score" in (run / "MODEL_CARD.md").read_text()
    assert yaml.safe_load((run / "resolved_config.yaml").read_text())["train"]["epochs"] == 1


def test_val_every_validates_every_nth_epoch_and_after_the_last(tmp_path, tiny_config):
    cfg = load_config(tiny_config, ["train.epochs=3", "train.val_every=2"])
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.fit()
    validated = [h["epoch"] for h in trainer.history if "val_dose_score" in h]
    assert validated == [2, 3] and [h["epoch"] for h in trainer.history] == [1, 2, 3]
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert len(rows) == 4 and "val_dose_score" in rows[0]  # one header, one row per epoch, empty val cells on epoch 1
    assert json.loads((tmp_path / "run" / "config.json").read_text())["validation"]["epoch"] in (2, 3)


def test_resume_continues_as_if_uninterrupted(tmp_path, tiny_config):
    straight = Trainer(load_config(tiny_config), tmp_path / "a", progress=False)
    straight.fit()
    interrupted = Trainer(load_config(tiny_config), tmp_path / "b", progress=False)
    interrupted.fit(stop_after=1)
    resumed = Trainer(load_config(tmp_path / "b" / "resolved_config.yaml"), tmp_path / "b", resume=True, progress=False)
    resumed.fit()
    a, b = load_weights(tmp_path / "a" / "last" / "model.safetensors"), load_weights(tmp_path / "b" / "last" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]


def test_predict_cli_and_checkpoint_checks(tmp_path, tiny_config):
    runner = CliRunner()
    assert runner.invoke(app, ["train", str(tiny_config), "--out", str(tmp_path / "run"), "train.epochs=1"]).exit_code == 0
    # one good patient and one broken one: the broken one is reported and skipped, exit 1
    split = tmp_path / "split"
    import shutil

    shutil.copytree(EXAMPLES / "pt_204", split / "pt_204")
    shutil.copytree(EXAMPLES / "pt_219", split / "pt_219")
    (split / "pt_219" / "ct.csv.gz").unlink()
    r = runner.invoke(app, ["predict", "--model", str(tmp_path / "run"), "--patients", str(split), "--out",
                            str(tmp_path / "pred"), "--tta"])
    assert r.exit_code == 1
    assert "ct.csv: missing required file (skipped)" in r.output and "1 of 2 patients predicted" in r.output
    from rtgen.data import read_dose_csv, read_patient

    dose = read_dose_csv(tmp_path / "pred" / "pt_204.csv")
    ref = read_patient(EXAMPLES / "pt_204")
    assert dose.min() >= 0 and not dose[~ref.possible_dose_mask].any() and dose.max() > 0
    r = runner.invoke(app, ["predict", "--model", str(tmp_path / "run" / "model.safetensors"), "--patients",
                            str(EXAMPLES / "pt_204"), "--out", str(tmp_path / "nii"), "--format", "nifti"])
    assert r.exit_code == 0 and (tmp_path / "nii" / "pt_204.nii.gz").is_file()
    # weights from another architecture: one clear error naming the mismatch
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    cfg["model"]["name"] = "unet"
    cfg["model"]["architecture"]["mixer"] = "none"
    (tmp_path / "run" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RtgenError, match="weights do not fit the architecture.*unexpected"):
        load_predictor(tmp_path / "run", "cpu")
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint at all")
    (tmp_path / "config.json").write_text((tmp_path / "run" / "config.json").read_text())
    with pytest.raises(RtgenError, match="not a valid safetensors checkpoint"):
        load_predictor(tmp_path / "bad.safetensors", "cpu")


@pytest.mark.slow  # over 9 s: `pytest -m slow` runs it (CONTRIBUTING.md)
def test_distributed_training_with_gloo_two_processes(tmp_path, tiny_config):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", "-m", "rtgen",
         "train", str(tiny_config), "--out", str(tmp_path / "ddp"), "train.epochs=1", "train.device=cpu"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "ddp" / "log.csv").read_text().splitlines()
    assert len(log) == 2  # header + one epoch, written once (rank 0 only)
    cfg = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert "2 process(es)" in cfg["training"]["hardware"]


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_loads_and_builds_its_network(path):
    cfg = load_config(path)
    import torch

    # a GPU-size network (DiffKT3D's 1.1 B parameters) is built on the meta device: the same modules and
    # shapes, without 15 s of allocating and initialising 4 GB on the CPU
    with torch.device("meta" if path.stem.endswith("_gpu") else "cpu"):
        model = cfg.task.build_model()
    assert count_parameters(model) > 0 or cfg.task.fits_directly  # trees have no parameters before fitting
    if path.stem.endswith("_cpu") and cfg.task.name == "dose_regression":  # the Table I trio is trained alike
        alike = load_config(path.parent / "mamba_unet_v2_cpu.yaml")
        assert cfg.train == dataclasses.replace(alike.train, out=cfg.train.out)
        assert cfg.features == alike.features and cfg.data == alike.data


def test_cpu_amp_autocasts_to_bf16_only_when_asked():
    """`train.cpu_amp` reaches the CPU through autocast_for(cpu=True); without it the CPU stays fp32."""
    import torch

    from rtgen.core.devices import autocast_for

    lin, x = torch.nn.Linear(4, 4), torch.randn(2, 4)
    with autocast_for(torch.device("cpu"), True, cpu=True):
        assert lin(x).dtype == torch.bfloat16
    with autocast_for(torch.device("cpu"), True):
        assert lin(x).dtype == torch.float32
