"""Run configuration: a YAML file validated against typed schemas before any data is read.

    rtgen train configs/mamba_unet_v2.yaml train.epochs=50 model.channels=[16,32,64,128]

Sections: `task` (optional; the model's registered task by default), `model` (name plus the
network's architecture keys), `train` (the engine's), and the sections the task owns (for the dose
tasks `features` and `data`, plus `diffusion`). A wrong type, an out-of-range value or an unknown
key is one `ConfigError` line naming the file and the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field

from rtgen.core.errors import ConfigError
from rtgen.core.schema import validate_section
from rtgen.tasks import Task, task_class
from rtgen.tasks.base import section_dict


@dataclass
class TrainConfig:
    epochs: Annotated[int, Field(ge=1)] = 100
    batch_size: Annotated[int, Field(ge=1)] = 8
    lr: Annotated[float, Field(gt=0)] = 1e-4
    weight_decay: Annotated[float, Field(ge=0)] = 1e-2
    warmup_steps: Annotated[int, Field(ge=0)] = 500
    grad_clip: Annotated[float, Field(ge=0)] | None = 1.0  # 0 or None: no clipping
    amp: bool = True  # bfloat16 autocast on CUDA
    cpu_amp: bool = False  # bfloat16 autocast on the CPU too (training and validation): faster where the CPU has bf16 units
    channels_last: bool = False  # conv weights and activations in channels-last order (2D or 3D): faster oneDNN convs on CPU
    ema_decay: Annotated[float, Field(gt=0, lt=1)] | None = None  # e.g. 0.999; None disables
    patience: Annotated[int, Field(ge=1)] = 10  # early stopping: validations without a better selection metric
    val_every: Annotated[int, Field(ge=1)] = 1  # validate every N epochs (and after the last)
    seed: Annotated[int, Field(ge=0)] = 0
    device: str = "auto"
    max_steps_per_epoch: Annotated[int, Field(ge=1)] | None = None
    val_batch_size: Annotated[int, Field(ge=1)] = 32
    out: str = "runs/run"
    # a run folder (or weights file) of the same task and model to start from: fine-tuning, a next
    # stage; empty or null (`train.init=` on the command line) starts from scratch
    init: str | None = ""

    def __post_init__(self):
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass
class RunConfig:
    """A validated run: the task (with its model architecture and sections) and the engine settings."""

    task: Task
    train: TrainConfig
    source: str = "config"

    def to_dict(self) -> dict:
        return {
            "task": self.task.name,
            "model": {"name": self.task.model_name, **self.task.arch_dict()},
            **{name: section_dict(v) for name, v in self.task.settings.items()},
            "train": dataclasses.asdict(self.train),
        }

    def __getattr__(self, name: str):  # cfg.features, cfg.data, ... : the task's sections
        settings = self.__dict__.get("task").settings if "task" in self.__dict__ else {}
        if name in settings:
            return settings[name]
        raise AttributeError(name)


def from_dict(raw: Any, source: str = "config") -> RunConfig:
    if not isinstance(raw, dict):
        raise ConfigError(source, f"a run config must be a mapping of sections, got {type(raw).__name__} {raw!r}")
    model = raw.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise ConfigError(source, "model.name is missing (a registered model; `rtgen models` lists them)")
    cls = task_class(raw.get("task"), model["name"], source)
    known = {"task", "model", "train", *cls.sections}
    unknown = sorted((str(k) for k in set(raw) - known), key=str)
    if unknown:
        raise ConfigError(source, f"unknown section {unknown[0]!r} for task {cls.name}; known: {', '.join(sorted(known))}")
    for name in ("model", "train", *cls.sections):
        if raw.get(name) is not None and not isinstance(raw[name], dict):
            raise ConfigError(source, f"{name} must be a mapping of keys to values, got {raw[name]!r}")
        odd = [k for k in raw.get(name) or {} if not isinstance(k, str)]
        if odd:
            raise ConfigError(source, f"{name}: key {odd[0]!r} is not a name")
    train = validate_section(TrainConfig, raw.get("train"), "train", source)
    arch = {k: v for k, v in model.items() if k != "name"}
    task = cls(model["name"], arch, {name: raw.get(name) for name in cls.sections}, source)
    return RunConfig(task, train, source)


def apply_overrides(raw: dict, overrides: list[str], source: str = "config") -> dict:
    """`section.key=value` (value parsed as YAML) into a copy of `raw`."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(source, f"override {item!r} is not of the form section.key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(source, f"override {item!r}: {p!r} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError:
            node[parts[-1]] = value
    return raw


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, f"cannot be read ({e.strerror if isinstance(e, OSError) else e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(path, f"not valid YAML ({' '.join(str(e).split())})") from None
    if raw is None:
        raise ConfigError(path, "is empty")
    if not isinstance(raw, dict):
        raise ConfigError(path, f"a run config must be a mapping of sections, got {type(raw).__name__} {raw!r}")
    return from_dict(apply_overrides(raw, list(overrides), str(path)), str(path))


def save_config(cfg: RunConfig, path: str | Path) -> None:
    from rtgen.core.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(_plain(cfg.to_dict()), sort_keys=False))


def _plain(o: Any):
    if isinstance(o, dict):
        return {k: _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    return o
