"""The CLI answers in seconds: arguments, configs and output paths are checked before PyTorch or any
network is imported. What is checked here is what makes that true and keeps it honest: the checks
import no torch (in fresh processes), the config classes rebuilt from the source are the real ones,
the recorded parameter counts are the networks', and each error is one line naming the key or path.
The seconds themselves are measured by benchmarks/cli_latency.py, not asserted here."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rtgen.cli import app
from rtgen.core import source_registry
from rtgen.core.errors import ConfigError
from rtgen.core.registry import MODELS, TASKS, parameter_counts
from rtgen.engine.config import check_config, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
EXAMPLE = ROOT / "rtgen" / "examples" / "openkbp" / "pt_204"


def _ours(registry) -> list:
    """The registry's entries from rtgen's own packages (other tests register networks of their own)."""
    registry.load()
    return [e for e in registry.entries() if e.cls.__module__.startswith("rtgen.")]


def _fresh_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


CHECK_ALL = """
import sys
from rtgen.core import source_registry
from rtgen.core.errors import ConfigError
from rtgen.engine.config import check_config
for path in sys.argv[2:]:
    check_config(path)
try:
    check_config(sys.argv[1])
    raise SystemExit("the bad config passed")
except ConfigError as e:
    print(e)
heavy = sorted(m for m in ("torch", "monai", "diffusers", "numba", "lightgbm", "numpy") if m in sys.modules)
networks = sorted(m for m in sys.modules if m.startswith(("rtgen.models.", "rtgen.tasks.")))
assert not heavy and not networks, (heavy, networks)
assert not source_registry.FALLBACKS, source_registry.FALLBACKS
"""


def test_validating_every_shipped_config_and_a_bad_one_imports_no_torch(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: unet, channels: [8, 16, 16, 32]}\ntrain: {epochs: ten}\n")
    assert CONFIGS
    r = _fresh_python(CHECK_ALL, str(bad), *map(str, CONFIGS))
    assert r.returncode == 0, r.stderr
    assert "train.epochs: Input should be a valid integer" in r.stdout


@pytest.mark.parametrize("args, needle", [
    (["train", "{bad}"], "train.epochs: Input should be a valid integer"),
    (["predict", "--patients", str(EXAMPLE), "--out", "{blocker}/sub"], "{blocker}/sub: cannot be written"),
    (["models", "--json"], None),
], ids=["train", "predict", "models"])
def test_the_commands_answer_before_torch_is_imported(tmp_path, args, needle):
    """Each in a fresh process, with Python's import log: no torch, no network module."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: mamba_unet_v2, channels: [8, 16, 16, 32]}\ntrain: {epochs: ten}\n")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    args = [a.format(bad=bad, blocker=blocker) for a in args]
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "rtgen", *args], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert not {"torch", "monai", "diffusers", "numba", "lightgbm"} & imported
    light = {"rtgen.inference", "rtgen.inference.catalogue"}  # torch-free: what `rtgen models` lists
    assert not [m for m in imported if m.startswith(("rtgen.models.", "rtgen.tasks.", "rtgen.inference")) and m not in light]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    if needle is None:
        assert r.returncode == 0 and not errors, r.stderr[-2000:]
        listing = json.loads(r.stdout)
        assert {m["model"] for m in listing["models"]} == {e.name for e in _ours(MODELS)}
    else:
        assert r.returncode == 1 and len(errors) == 1, r.stderr[-2000:]
        assert needle.format(blocker=blocker) in errors[0]


# ---------------------------------------------------------------- the rebuilt classes are the real ones


def _shape(cls: type) -> list[tuple]:
    """Each field's name, type (as written out) and default: what a config is checked against."""
    hints = typing.get_type_hints(cls, include_extras=True)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "<required>")
        if dataclasses.is_dataclass(default):
            default = (type(default).__qualname__, dataclasses.asdict(default))
        kind = repr(hints[f.name]).replace(source_registry._PREFIX, "")
        rows.append((f.name, kind, repr(default)))
    return rows


def _real_pairs():
    for entry in _ours(MODELS):
        yield f"model {entry.name}", source_registry.model_config_class(
            source_registry.source_index("rtgen.models").models[entry.name], fallback=False), entry.config
    for entry in _ours(TASKS):
        rebuilt = source_registry.task_sections(source_registry.source_index("rtgen.tasks").tasks[entry.name],
                                                fallback=False)
        assert list(rebuilt) == list(entry.cls.sections), entry.name
        for name, cls in entry.cls.sections.items():
            yield f"task {entry.name}, section {name}", rebuilt[name], cls


def test_the_registries_read_from_the_source_are_the_imported_ones():
    models, tasks = source_registry.source_index("rtgen.models"), source_registry.source_index("rtgen.tasks")
    assert not models.dynamic and not tasks.dynamic, "register with literal names, as in rtgen/models/unet2d.py"
    assert sorted(models.models) == [e.name for e in _ours(MODELS)]
    assert sorted(tasks.tasks) == [t.name for t in _ours(TASKS)]
    for e in _ours(MODELS):
        s = models.models[e.name]
        assert (s.task, s.presets, s.description, s.config) == (e.task, e.presets, e.description, e.config.__name__)
    for t in _ours(TASKS):
        assert tasks.tasks[t.name].description == t.description


def test_every_rebuilt_config_class_has_the_fields_types_and_defaults_of_the_real_one():
    for what, rebuilt, real in _real_pairs():
        assert rebuilt is not real and rebuilt.__module__.startswith(source_registry._PREFIX), what
        assert rebuilt.__qualname__ == real.__qualname__, what
        assert _shape(rebuilt) == _shape(real), what
        assert sorted(k for k in vars(rebuilt) if callable(vars(rebuilt)[k])) == \
            sorted(k for k in vars(real) if callable(vars(real)[k])), what
    assert not source_registry.FALLBACKS


# ---------------------------------------------------------------- the same errors, sooner


@pytest.mark.parametrize("override, needle", [
    ("train.epochs=ten", "train.epochs: Input should be a valid integer"),
    ("train.device=tpu", "train: device must be auto, cpu, cuda or cuda:N"),
    ("model.channels=abc", "model.channels: Input should be a valid tuple"),
    ("model.foo=1", "model.foo: unknown key (known keys: "),
    ("model.mixer=none", "model.mixer is fixed to 'mamba2' for 'mamba_unet_v2'"),
    ("model.d_state=0", "model.d_state: Input should be greater than or equal to 1"),
    ("features.dose_max_gy=0", "features.dose_max_gy: Input should be greater than 0"),
    ("data.augment=maybe", "data.augment: Input should be a valid boolean"),
    ("bogus.x=1", "unknown section 'bogus' for task dose_regression"),
    ("task=nope", "unknown task 'nope'; known: "),
    ("model.name=resnet", "unknown model 'resnet'; known: "),
])
def test_a_bad_key_is_the_same_one_line_error_before_and_after_the_import(override, needle):
    config = ROOT / "configs" / "mamba_unet_v2.yaml"
    with pytest.raises(ConfigError) as early:
        check_config(config, [override])
    with pytest.raises(ConfigError) as full:
        load_config(config, [override])
    assert needle in str(early.value) and "\n" not in str(early.value)
    assert str(early.value) == str(full.value)


def test_the_cli_prints_one_line_naming_the_key_or_the_path(tmp_path):
    runner = CliRunner()
    config = tmp_path / "run.yaml"
    config.write_text("model: {name: diffma_b}\ntrain: {epochs: ten}\n")
    r = runner.invoke(app, ["train", str(config)])
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error:") and "train.epochs" in lines[0]
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for args in (["predict", "--patients", str(EXAMPLE), "--out", str(blocker / "sub")],
                 ["report", "--pred", str(EXAMPLE), "--ref", str(EXAMPLE), "--out", str(blocker / "r.html")],
                 ["convert", "openkbp", str(EXAMPLE), str(blocker / "cache")]):
        r = runner.invoke(app, args)
        lines = [line for line in r.output.splitlines() if line.strip()]
        assert r.exit_code == 1 and len(lines) == 1 and f"{args[-1]}: cannot be written" in lines[0], r.output
    r = runner.invoke(app, ["predict", "--patients", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and f"{tmp_path / 'nowhere'}: not found" in r.output and not (tmp_path / "o").exists()


# ---------------------------------------------------------------- rtgen models


def test_the_recorded_parameter_counts_are_the_networks():
    """rtgen models reads them from rtgen/models/parameter_counts.json; after changing a network or its
    defaults, `python scripts/parameter_counts.py` rewrites it."""
    assert source_registry.parameter_table() == parameter_counts([e.name for e in _ours(MODELS)]), \
        "a network or its defaults changed: run python scripts/parameter_counts.py (a new network too)"


def test_a_model_in_a_new_file_is_read_without_importing_it(tmp_path, monkeypatch):
    pkg = tmp_path / "plugin_nets"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "one_file.py").write_text(
        "from dataclasses import dataclass\nfrom typing import Annotated\nimport torch.nn as nn\n"
        "from pydantic import Field\nfrom rtgen.models import register_model\n\n"
        "WIDTH = 8\n\n@dataclass\nclass Cfg:\n    width: Annotated[int, Field(ge=1)] = WIDTH\n\n"
        "    def __post_init__(self):\n        nn.Identity()  # needs torch: the check falls back to the module\n\n"
        "@register_model('plugin_net', config=Cfg, task='dose_regression')\n"
        "class Net(nn.Module):\n    '''A test network.'''\n\n    def __init__(self, cfg):\n        super().__init__()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))  # importing it below registers it: not for later tests
    entry = source_registry.source_index("plugin_nets").models["plugin_net"]
    assert (entry.task, entry.description) == ("dose_regression", "A test network.")
    schema = source_registry.model_schema("plugin_net", package="plugin_nets")
    assert [f.default for f in dataclasses.fields(schema.config)] == [8]
    assert "plugin_nets.one_file" not in sys.modules
    with pytest.raises(source_registry.NotStatic, match="nn"):  # a check that needs what only the module has
        schema.config()
    real = source_registry.real_class(schema.config)
    assert real.__module__ == "plugin_nets.one_file" and real().width == 8
