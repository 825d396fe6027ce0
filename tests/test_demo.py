import json

from typer.testing import CliRunner

from rtgen.cli import app
from rtgen.models import shipped_model_dir
from rtgen.predict import load_predictor


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
