import json

import pytest
from typer.testing import CliRunner

from rtgen.cli import app
from rtgen.hub import shipped_model_dir
from rtgen.inference.predictor import load_predictor


def test_shipped_model_loads_and_is_small():
    path = shipped_model_dir()
    assert (path / "model.safetensors").stat().st_size < 50 * 2**20
    assert (path / "MODEL_CARD.md").is_file()
    predictor = load_predictor(path, "cpu")
    assert predictor.config["model"]["name"] == "mamba_unet_v2"
    assert predictor.config["training"]["train_patients"] == 169
    assert predictor.config["training"]["val_patients"] == 33


def test_demo_predicts_and_evaluates_the_examples(tmp_path):
    r = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "demo" / "evaluation" / "metrics.json").read_text())
    assert m["n_patients"] == 2
    # a trained model, not noise: within a few Gy of the clinical plans
    assert 0 < m["dose_score"] < 6.0 and 0 < m["dvh_score"] < 8.0
    assert (tmp_path / "demo" / "evaluation" / "dvh_pt_204.png").is_file()
    assert (tmp_path / "demo" / "predictions" / "pt_219.csv").is_file()
    assert (tmp_path / "demo" / "report.html").stat().st_size > 100_000  # the HTML report (tests/test_report.py)
    assert "report.html" in r.output


def test_shipped_md_dose_is_a_trained_diffusion_checkpoint():
    path = shipped_model_dir("md_dose")
    assert path.name == "md_dose_openkbp" and (path / "MODEL_CARD.md").is_file()
    assert (path / "model.safetensors").stat().st_size < 50 * 2**20
    predictor = load_predictor(path, "cpu")
    assert predictor.task.diffusion is not None and predictor.task.diffusion.clip_sample == 1.0
    assert predictor.config["training"]["train_patients"] == 169
    assert predictor.config["validation"]["patients"] == 33


@pytest.mark.slow  # over 9 s: `pytest -m slow` runs it (CONTRIBUTING.md)
def test_demo_with_md_dose_samples_a_plausible_dose(tmp_path):
    r = CliRunner().invoke(app, ["demo", "--model", "md_dose", "--out", str(tmp_path / "demo")])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())  # rich wraps long lines
    assert "shipped model: md_dose" in text and "on 33 OpenKBP validation patients" in text
    m = json.loads((tmp_path / "demo" / "evaluation" / "metrics.json").read_text())
    # a trained denoiser, not noise: a pure-noise sample would be tens of Gy off
    assert 0 < m["dose_score"] < 8.0 and 0 < m["dvh_score"] < 8.0
