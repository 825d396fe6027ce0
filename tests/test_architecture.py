"""The house: layered imports without cycles, the registries, the config schema, and the worked
example of adding a model (taken from docs/extending.md, so the page stays true)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from rtgen.cli import app
from rtgen.core.errors import ConfigError
from rtgen.core.registry import MODELS, TASKS, Registry, count_parameters
from rtgen.engine.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rtgen"
EXAMPLES = PACKAGE / "examples" / "openkbp"

# cli -> engine | inference | evaluation -> tasks -> models | diffusion | data -> layers | ssm -> core
FLOORS = {
    "core": 0,
    "ssm": 1, "layers": 1, "dosimetry": 1, "imaging": 1,
    "models": 2, "diffusion": 2, "data": 2,
    "tasks": 3,
    "engine": 4, "inference": 4, "evaluation": 4, "planning": 4, "hub": 4, "bench": 4,
    "cli": 5,
}


def _imports() -> dict[str, set[str]]:
    """Top-level package of every rtgen module -> the rtgen packages it imports (anywhere in the file)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).parts
        if len(rel) == 1:  # rtgen/__init__.py, rtgen/__main__.py: the entry point, above everything
            continue
        pkg = rel[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "rtgen" and len(parts) > 1 and parts[1] != pkg:
                    graph.setdefault(pkg, set()).add(parts[1])
    return graph


def test_every_package_has_a_floor():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages == set(FLOORS), packages ^ set(FLOORS)


def test_imports_never_run_back_up_a_floor():
    upward = [f"{a} -> {b}" for a, deps in _imports().items() for b in deps if FLOORS[b] > FLOORS[a]]
    assert not upward, upward


def test_no_import_cycle_between_packages():
    graph = _imports()

    def reaches(start, goal, seen=()):
        return any(d == goal or (d not in seen and reaches(d, goal, (*seen, d))) for d in graph.get(start, ()))

    cycles = [p for p in graph if reaches(p, p)]
    assert not cycles, cycles


def test_registries_know_the_models_and_tasks():
    assert {"mamba_unet_v2", "unet", "transformer_unet", "md_dose"} <= set(MODELS.names())
    assert {"dose_regression", "dose_diffusion"} <= set(TASKS.names())
    assert MODELS.get("md_dose").task == "dose_diffusion"
    with pytest.raises(ConfigError, match="unknown model 'resnet'; known:"):
        MODELS.get("resnet")


def test_a_new_module_in_the_package_is_found(tmp_path, monkeypatch):
    """Discovery: every module of the registry's package is imported, so one new file is enough."""
    pkg = tmp_path / "plugin_models"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "one_file.py").write_text(
        "from dataclasses import dataclass\nimport torch.nn as nn\nfrom rtgen.models import register_model\n\n"
        "@dataclass\nclass Cfg:\n    in_channels: int = 3\n\n"
        "@register_model('discovered_net', config=Cfg, task='dose_regression')\n"
        "class Net(nn.Module):\n    def __init__(self, cfg):\n        super().__init__()\n"
        "        self.conv = nn.Conv2d(cfg.in_channels, 1, 1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    Registry("model", "plugin_models").load()
    assert "discovered_net" in MODELS and count_parameters(MODELS.get("discovered_net").build()) == 4


def _worked_example(marker: str) -> str:
    text = (ROOT / "docs" / "extending.md").read_text()
    m = re.search(rf"<!-- worked-example: {marker} -->\s*```\w+\n(.*?)```", text, re.S)
    assert m, f"docs/extending.md lost its worked example ({marker})"
    return m.group(1)


def test_worked_example_adds_a_model_that_trains_and_predicts(tmp_path, monkeypatch):
    module = types.ModuleType("rtgen_docs_tiny_cnn")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(_worked_example("model"), "docs/extending.md", "exec"), module.__dict__)
    monkeypatch.chdir(ROOT)  # the config's data paths are relative to the repository
    config = tmp_path / "tiny_cnn.yaml"
    config.write_text(_worked_example("config"))
    runner = CliRunner()
    r = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["task"] == "dose_regression" and cfg["model"]["name"] == "tiny_cnn"
    assert cfg["model"]["architecture"] == {"in_channels": 11, "width": 8}  # CT, PTV, mask, 7 OARs, 1 PSDM
    r = runner.invoke(app, ["predict", "--model", str(tmp_path / "run"), "--patients", str(EXAMPLES / "pt_204"),
                            "--out", str(tmp_path / "pred")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "pred" / "pt_204.csv").is_file()
    r = runner.invoke(app, ["models", "--json"])
    listed = {m["model"]: m for m in json.loads(r.output)["models"]}
    assert listed["tiny_cnn"]["task"] == "dose_regression" and listed["tiny_cnn"]["parameters"] > 0
    # the schema of the new model guards its config like any other
    with pytest.raises(ConfigError, match=r"model.width: Input should be a valid integer"):
        load_config(config, ["model.width=ten"])
    with pytest.raises(ConfigError, match=r"model.depth: unknown key"):
        load_config(config, ["model.depth=3"])


def test_rtgen_models_lists_networks_parameters_and_shipped_checkpoints():
    r = CliRunner().invoke(app, ["models", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    params = {m["model"]: m["parameters"] for m in data["models"]}
    assert params["mamba_unet_v2"] == 2_301_845 and params["md_dose"] == 30_121_249  # default (paper-size) configs
    shipped = {s["folder"]: s for s in data["shipped"]}
    assert shipped["mamba_unet_v2_openkbp"]["task"] == "dose_regression" and shipped["mamba_unet_v2_openkbp"]["default"]
    assert shipped["md_dose_openkbp"]["task"] == "dose_diffusion"


BAD_CONFIGS = [
    ("train: {epochs: ten}", r"train.epochs: Input should be a valid integer.*'ten'"),
    ("train: {batch_size: 0}", r"train.batch_size: Input should be greater than or equal to 1"),
    ("train: {batch_size: 8.5}", r"train.batch_size: Input should be a valid integer, got a number with a fractional part"),
    ("train: {epochs: -3}", r"train.epochs: Input should be greater than or equal to 1"),
    ("train: {learning_rate: 1}", r"train.learning_rate: unknown key"),
    ("features: {dose_max_gy: 0}", r"features.dose_max_gy: Input should be greater than 0"),
    ("diffusion: {timesteps: 10}", r"unknown section 'diffusion' for task dose_regression"),
    ("model: {channels: [8, 16]}", r"model.channels"),
]


@pytest.mark.parametrize("extra,message", BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_bad_config_is_one_line_naming_the_key_before_any_data_is_read(tmp_path, extra, message):
    raw = {"model": {"name": "mamba_unet_v2"}, "data": {"train": str(tmp_path / "missing"), "val": str(tmp_path / "missing")}}
    for section, values in yaml.safe_load(extra).items():
        raw.setdefault(section, {}).update(values)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    r = CliRunner().invoke(app, ["train", str(path), "--out", str(tmp_path / "run")])
    assert r.exit_code == 1
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), r.output
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "run").exists()


def test_bare_scalar_yaml_is_refused(tmp_path):
    path = tmp_path / "scalar.yaml"
    path.write_text("42\n")
    with pytest.raises(ConfigError, match="must be a mapping of sections, got int 42"):
        load_config(path)


def test_failed_run_leaves_no_run_folder(tmp_path):
    raw = {"model": {"name": "mamba_unet_v2", "channels": [8, 16, 16, 32], "mixer_from_level": 2},
           "data": {"train": str(EXAMPLES), "val": str(tmp_path / "no_such_split"), "feature_workers": 0},
           "train": {"epochs": 1}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    r = CliRunner().invoke(app, ["train", str(path), "--out", str(tmp_path / "run")])
    assert r.exit_code == 1 and "split folder not found" in r.output
    assert not (tmp_path / "run").exists()


def test_predict_takes_one_nifti_patient_folder_and_any_grid(tmp_path):
    """One NIfTI patient folder is a patient, like one CSV folder; a cropped grid predicts on that grid."""
    from rtgen.data import load_patient, read_patient
    from rtgen.data.records import Patient
    from rtgen.data.sources.nifti import read_nifti, write_nifti_patient

    p = read_patient(EXAMPLES / "pt_204")
    write_nifti_patient(p, tmp_path / "nifti" / "pt_204")
    q = load_patient(tmp_path / "nifti" / "pt_204")  # what `rtgen predict` reads from a patient folder
    assert q.id == "pt_204" and np.allclose(q.spacing, p.spacing) and sorted(q.structures) == sorted(p.structures)
    assert np.array_equal(q.ct, p.ct) and np.array_equal(q.possible_dose_mask, p.possible_dose_mask)
    assert all(np.array_equal(q.structures[k], p.structures[k]) for k in p.structures)
    # a smaller grid (96 x 112 x 80 voxels around the targets), given as the patient folder itself
    box = (slice(16, 112), slice(8, 120), slice(24, 104))
    small = Patient("pt_small", p.ct[box], p.dose[box], p.possible_dose_mask[box],
                    {k: v[box] for k, v in p.structures.items()}, p.spacing)
    write_nifti_patient(small, tmp_path / "small" / "pt_small")
    r = CliRunner().invoke(app, ["predict", "--model", "hub:mamba_unet_v2_openkbp", "--patients", str(tmp_path / "small" / "pt_small"),
                                 "--out", str(tmp_path / "c"), "--format", "nifti"])
    assert r.exit_code == 0, r.output
    dose, _ = read_nifti(tmp_path / "c" / "pt_small.nii.gz")
    assert dose.shape == (96, 112, 80) and dose.max() > 30 and not dose[~small.possible_dose_mask].any()


def test_the_cli_imports_fast_without_heavy_optional_packages():
    code = "import sys, rtgen.cli; print(sorted(m for m in ('tensorboard', 'peft', 'pydicom') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
