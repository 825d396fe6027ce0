"""Run configuration: a YAML file validated against typed schemas before any data is read.

    rtgen train configs/mamba_unet_v2.yaml train.epochs=50 model.channels=[16,32,64,128]

Sections: `task` (optional; the model's registered task by default), `model` (name plus the
network's architecture keys), `train` (the engine's), and the sections the task owns (for the dose
tasks `features` and `data`, plus `diffusion`). A wrong type, an out-of-range value or an unknown
key is one `ConfigError` line naming the file and the key.

`check_config` checks all of that without importing PyTorch or any network (the sections' dataclasses
are read from the source, `rtgen.core.source_registry`), so that the CLI answers a bad config in a
second; `load_config` then builds the task, whose own checks (those that combine keys or read files)
follow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import yaml
from pydantic import Field

from rtgen.core.errors import ConfigError
from rtgen.core.schema import check_keys, validate_section

if TYPE_CHECKING:
    from rtgen.tasks import Task


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
        from rtgen.tasks.base import section_dict

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


def _model_section(raw: Any, source: str) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(source, f"a run config must be a mapping of sections, got {type(raw).__name__} {raw!r}")
    model = raw.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise ConfigError(source, "model.name is missing (a registered model; `rtgen models` lists them)")
    return model


def _check_sections(raw: dict, task: str, sections, source: str) -> TrainConfig:
    """Section names and mappings, then the train section: what `from_dict` checks before the task."""
    known = {"task", "model", "train", *sections}
    unknown = sorted((str(k) for k in set(raw) - known), key=str)
    if unknown:
        raise ConfigError(source, f"unknown section {unknown[0]!r} for task {task}; known: {', '.join(sorted(known))}")
    for name in ("model", "train", *sections):
        if raw.get(name) is not None and not isinstance(raw[name], dict):
            raise ConfigError(source, f"{name} must be a mapping of keys to values, got {raw[name]!r}")
        odd = [k for k in raw.get(name) or {} if not isinstance(k, str)]
        if odd:
            raise ConfigError(source, f"{name}: key {odd[0]!r} is not a name")
    return validate_section(TrainConfig, raw.get("train"), "train", source)


def from_dict(raw: Any, source: str = "config") -> RunConfig:
    from rtgen.tasks import task_class

    model = _model_section(raw, source)
    cls = task_class(raw.get("task"), model["name"], source)
    train = _check_sections(raw, cls.name, cls.sections, source)
    arch = {k: v for k, v in model.items() if k != "name"}
    task = cls(model["name"], arch, {name: raw.get(name) for name in cls.sections}, source)
    return RunConfig(task, train, source)


def _registered_task(raw: dict, model: dict, source: str) -> Any:
    """The config's `task`, else its model's registered task read from the source (no PyTorch); None
    where only importing the registries can tell."""
    from rtgen.core.source_registry import model_schema

    task = raw.get("task")
    if task is None:
        entry = model_schema(model["name"], source)
        task = entry.task if entry is not None else None
    return task


def check_dict(raw: Any, source: str = "config") -> TrainConfig:
    """Check a run config as `from_dict` does, in the same order and with the same one-line errors,
    without importing PyTorch or any network: the model and task are looked up, and their sections'
    dataclasses rebuilt, from the source files (`rtgen.core.source_registry`). Every section's keys,
    types and ranges are checked, and the model's keys against its config dataclass and presets;
    what the task adds from its data (e.g. a network's input channels) and the checks that combine
    keys with it are left to `from_dict`. Returns the train section."""
    from rtgen.core.registry import with_presets
    from rtgen.core.source_registry import NotStatic, model_schema, real_class, task_schema

    model = _model_section(raw, source)
    task = _registered_task(raw, model, source)
    if task is not None and not isinstance(task, str):
        raise ConfigError(source, f"task must be a task name, got {task!r}")
    sections = task_schema(task, source) if task is not None else None
    if sections is None:  # only importing the registries can tell (a module registers names not read)
        return validate_section(TrainConfig, raw.get("train"), "train", source)
    train = _check_sections(raw, task, sections, source)
    entry = model_schema(model["name"], source)  # what the task looks up first

    def check(fn, cls, values, where):
        try:
            return fn(cls, values, where, source)
        except NotStatic:  # a rebuilt check needed what only the module has: use the module's class
            return fn(real_class(cls), values, where, source)

    for name, cls in sections.items():
        check(validate_section, cls, raw.get(name), name)
    if entry is None:  # a model only importing the networks can find: its keys are checked then
        return train
    values = {k: v for k, v in model.items() if k != "name"}
    check(check_keys, entry.config, with_presets(entry.name, entry.presets, values, source), "model")
    return train


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


def read_config(path: str | Path, overrides: list[str] = ()) -> dict:
    """The YAML mapping of a run config file with `section.key=value` overrides applied."""
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
    return apply_overrides(raw, list(overrides), str(path))


def migrate_run_config(raw: dict, source: str = "config") -> dict:
    """A run's resolved_config.yaml written by an older rtgen, under today's keys (`rtgen.core.migration`),
    so `rtgen train --resume` continues it; no PyTorch is imported."""
    from rtgen.core.migration import migrate_sections

    task = _registered_task(raw, _model_section(raw, source), source)
    return migrate_sections(raw, task) if isinstance(task, str) else raw


def check_config(path: str | Path, overrides: list[str] = (), migrate: bool = False) -> tuple[dict, TrainConfig]:
    """Read and check a run config without importing PyTorch or any network (`check_dict`):
    (the mapping with the overrides applied, its train section). `migrate`: a run folder's config,
    whose keys an older rtgen may have written."""
    raw = read_config(path, overrides)
    if migrate:
        raw = migrate_run_config(raw, str(path))
    return raw, check_dict(raw, str(path))


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    return from_dict(read_config(path, overrides), str(Path(path)))


def save_config(cfg: RunConfig, path: str | Path) -> None:
    from rtgen.core.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(_plain(cfg.to_dict()), sort_keys=False))


def _plain(o: Any):
    if isinstance(o, dict):
        return {k: _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    return o
