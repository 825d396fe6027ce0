import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from rtgen.cli import app
from rtgen.inference.predictor import load_predictor
from rtgen.models import count_parameters
from rtgen.models.md_dose import MDDoseConfig, MDDoseNet
from rtgen.tasks.dose_base import SamplingConfig

EXAMPLES = Path(__file__).resolve().parents[1] / "rtgen" / "examples" / "openkbp"
TINY = {
    "model": {"name": "md_dose", "base_channels": 8, "levels": 2, "patch_size": 4, "d_state": 4},
    "features": {"psdm_structures": ["PTV70"]},
    "diffusion": {"val_steps": 2},
    "data": {"train": str(EXAMPLES), "val": str(EXAMPLES), "feature_workers": 0},
    "train": {"epochs": 1, "batch_size": 4, "warmup_steps": 1, "max_steps_per_epoch": 2, "val_batch_size": 64},
}


@pytest.mark.parametrize("encoder", ["mamba", "conv", "transformer", "none"])
def test_structure_encoder_variants(encoder):
    net = MDDoseNet(MDDoseConfig(cond_channels=5, base_channels=8, levels=2, patch_size=4, d_state=4,
                                 structure_encoder=encoder))
    out = net(torch.randn(2, 1, 32, 32), torch.tensor([1, 900]), torch.randn(2, 5, 32, 32))
    assert out.shape == (2, 1, 32, 32)
    out.mean().backward()


def test_time_and_structure_change_the_prediction():
    torch.manual_seed(0)
    net = MDDoseNet(MDDoseConfig(cond_channels=3, base_channels=8, levels=2, patch_size=4, d_state=4)).eval()
    x, c = torch.randn(1, 1, 32, 32), torch.randn(1, 3, 32, 32)
    a = net(x, torch.tensor([10]), c)
    assert not torch.allclose(a, net(x, torch.tensor([800]), c))
    assert not torch.allclose(a, net(x, torch.tensor([10]), c + 1))


def test_default_size_is_the_papers():
    assert 28e6 < count_parameters(MDDoseNet(MDDoseConfig())) < 33e6  # Table 2: 30.47 M


def test_md_dose_trains_predicts_with_uncertainty_and_evaluates(tmp_path):
    cfg = tmp_path / "md.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    runner = CliRunner()
    r = runner.invoke(app, ["train", str(cfg), "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["name"] == "md_dose" and saved["diffusion"]["prediction"] == "epsilon"
    card = (tmp_path / "run" / "MODEL_CARD.md").read_text()
    assert "denoising MSE in the possible dose mask, epsilon prediction" in card and "Smooth L1" not in card
    assert "one sample per patient from dpmpp with 2 steps" in card
    pred = tmp_path / "pred"
    args = ["predict", "--model", str(tmp_path / "run"), "--patients", str(EXAMPLES), "--out", str(pred),
            "--sampler", "ddim", "--steps", "3", "--samples", "2", "--seed", "7"]
    assert runner.invoke(app, args).exit_code == 0
    assert (pred / "pt_204.csv").is_file() and (pred / "pt_204_std.nii.gz").is_file()
    r = runner.invoke(app, ["evaluate", "--pred", str(pred), "--ref", str(EXAMPLES), "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(m["uncertainty_error_correlation"]) == {"pt_204", "pt_219"}
    assert "uncertainty vs |error| correlation" in r.output
    # deterministic for a seed
    p = load_predictor(tmp_path / "run", "cpu")
    s = SamplingConfig("dpmpp", 2, 1, 3)
    assert np.array_equal(p.predict(EXAMPLES / "pt_219", sampling=s), p.predict(EXAMPLES / "pt_219", sampling=s))
    r = runner.invoke(app, ["predict", "--model", str(tmp_path / "run"), "--patients", str(EXAMPLES), "--out",
                            str(pred), "--sampler", "euler"])
    assert r.exit_code == 1 and "--sampler euler: md_dose samples with one of ddpm, ddim, dpmpp, ode" in r.output
