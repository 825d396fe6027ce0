"""The trained latent autoencoder of DiffMa (MONAI AutoencoderKL, task image_autoencoder): its shapes,
the wrapper that freezes it under diffusion, and end to end on synthetic registered pairs: it trains
from the CLI, reconstructs better than an untrained one, and DiffMa trains on its latents."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ctmr_phantom import write_pair
from typer.testing import CliRunner

from rtgen.cli import app
from rtgen.core.checkpoint import read_config, resolve_checkpoint
from rtgen.core.errors import ConfigError
from rtgen.core.registry import MODELS, build_model
from rtgen.models.frozen_autoencoders import FrozenAutoencoderKL
from rtgen.tasks import task_from_checkpoint

runner = CliRunner()
TINY = ["model.channels=[8,16,16,16]", "model.norm_num_groups=8", "model.latent_channels=4"]


pytestmark = pytest.mark.usefixtures("one_thread")


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


@pytest.fixture(scope="module")
def autoencoder_run(pairs, tmp_path_factory):
    run = tmp_path_factory.mktemp("autoencoder") / "run"
    _train("configs/diffma_autoencoder.yaml", pairs, run, *TINY, "train.epochs=8", "train.batch_size=6", "train.lr=3e-3",
           "train.warmup_steps=0")
    return run


def test_the_default_autoencoder_downsamples_by_8_like_taef2():
    torch.manual_seed(0)
    model = build_model("autoencoder_kl")
    assert model.factor == 8 and model.latent_channels == 8
    x = torch.rand(2, 1, 64, 48)
    z = model.encode_mean(x)
    assert z.shape == (2, 8, 8, 6)
    assert model.decode(z).shape == x.shape
    recon, mu, sigma = model(x)
    assert recon.shape == x.shape and mu.shape == sigma.shape == z.shape and (sigma > 0).all()
    model.eval()
    assert torch.equal(model.encode_mean(x), model.encode_mean(x))  # the latent diffusion sees is deterministic


def test_the_factor_follows_the_levels_and_bad_combinations_are_config_errors():
    model = build_model("autoencoder_kl", channels=(16, 32), latent_channels=3)
    assert model.factor == 2 and model.encode_mean(torch.rand(1, 1, 16, 16)).shape == (1, 3, 8, 8)
    with pytest.raises(ConfigError, match="norm_num_groups 16 must divide"):
        build_model("autoencoder_kl", channels=(24, 32))
    with pytest.raises(ValueError, match="every side a multiple of 8"):
        build_model("autoencoder_kl").encode_mean(torch.rand(1, 1, 20, 20))
    assert MODELS.get("autoencoder_kl").task == "image_autoencoder"


def test_the_autoencoder_refuses_regression_inputs_with_one_clear_error(pairs, tmp_path):
    """2.5D context and extra CT windows are inputs of image_regression: the autoencoder, which
    reconstructs one grey slice, names the setting instead of failing on its channel count."""
    for bad in ("data.context_slices=1", "data.ct_windows=[[-200,300]]"):
        result = runner.invoke(app, ["train", "configs/diffma_autoencoder.yaml", f"data.train={pairs / 'train'}",
                                     f"data.val={pairs / 'val'}", bad, "--out", str(tmp_path / "bad")])
        assert result.exit_code != 0 and "reconstructs one grey slice" in result.output
        assert "Traceback" not in result.output and not (tmp_path / "bad").exists()


def test_the_frozen_autoencoder_freezes_the_model_and_keeps_slices_in_range():
    frozen = FrozenAutoencoderKL(build_model("autoencoder_kl", channels=(16, 16, 16), latent_channels=4))
    assert (frozen.channels, frozen.factor) == (4, 4)
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.model.training
    z = frozen.encode(torch.rand(3, 1, 32, 32))
    out = frozen.decode(z)
    assert z.shape == (3, 4, 8, 8) and out.shape == (3, 1, 32, 32) and 0 <= out.min() and out.max() <= 1


def test_training_reconstructs_ct_and_mr_better_than_an_untrained_autoencoder(autoencoder_run):
    weights, config = resolve_checkpoint(autoencoder_run)
    cfg = read_config(config)
    assert cfg["task"] == "image_autoencoder" and cfg["model"]["architecture"]["channels"] == [8, 16, 16, 16]
    assert {"ssim", "psnr", "ct_ssim", "ct_psnr"} <= set(cfg["validation"])
    task = task_from_checkpoint(cfg)
    val = task.val_data(progress=False)
    torch.manual_seed(0)
    before, _ = task.validate(task.build_model(), val, "cpu", 8)
    after, (ps, recon) = task.validate(task.load_model(weights), val, "cpu", 8)
    assert after["ssim"] == pytest.approx(cfg["validation"]["ssim"], abs=1e-3)  # the saved model is the scored one
    assert after["ssim"] > before["ssim"] + 5 and after["psnr"] > before["psnr"] + 2
    assert after["ct_ssim"] > before["ct_ssim"] + 5 and after["ct_psnr"] > before["ct_psnr"] + 2
    assert recon.shape == ps.mr.shape and 0 <= recon.min() and recon.max() <= 1


def test_diffma_trains_on_the_trained_autoencoders_latents(pairs, autoencoder_run, tmp_path):
    run = tmp_path / "diffma"
    _train("configs/diffma_cpu.yaml", pairs, run, "latent.autoencoder=autoencoder_kl",
           f"latent.autoencoder_run={autoencoder_run}",
           "model.hidden_size=32", "model.depth=2", "model.d_state=4", "train.epochs=1", "train.batch_size=4",
           "diffusion.embedder_pretrain_steps=3", "diffusion.val_steps=2", f"data.cache={tmp_path / 'cache'}")
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["latent"]["autoencoder"] == "autoencoder_kl" and cfg["latent"]["autoencoder_run"] == str(autoencoder_run)
    assert (run / "autoencoder" / "config.json").is_file()  # the run carries its autoencoder
    assert cfg["model"]["architecture"]["in_channels"] == 4  # the autoencoder's latent channels, not TAEF2's 32
    assert cfg["latent"]["scale"] > 0 and np.isfinite(cfg["validation"]["ssim"])
