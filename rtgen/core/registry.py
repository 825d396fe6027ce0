"""Registries: networks and tasks register themselves by name, so adding one is one new file.

    @register_model("tiny_unet", config=TinyConfig, task="dose_regression")
    class TinyUNet(nn.Module):
        def __init__(self, cfg: TinyConfig): ...

`rtgen.models` and `rtgen.tasks` import every module of their package, so a new file there is
found without touching any other file. A name may be registered once; the same class may be
registered under several names with different preset config values (the Table I skeletons).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rtgen.core.errors import ConfigError
from rtgen.core.schema import validate_section


def with_presets(name: str, presets: dict, values: dict, source: str = "config") -> dict:
    """A model's architecture keys `values` over the `presets` its name fixes, or ConfigError where a
    value contradicts one (also what `rtgen.engine.config.check_dict` checks, without PyTorch)."""
    clash = sorted(k for k in presets if k in values and values[k] != presets[k])
    if clash:
        raise ConfigError(source, f"model.{clash[0]} is fixed to {presets[clash[0]]!r} for {name!r}")
    return {**presets, **values}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    cls: type
    config: type  # a dataclass; its fields are the architecture keys
    task: str  # the task that trains this network by default
    presets: dict = field(default_factory=dict)  # config values that define this name (e.g. mixer="none")
    description: str = ""

    def make_config(self, source: str = "config", **values):
        """Validated architecture: presets, then `values` (unknown keys, wrong types and ranges refused)."""
        return validate_section(self.config, with_presets(self.name, self.presets, values, source), "model", source)

    def build(self, config=None, **values):
        config = config if config is not None else self.make_config(**values)
        try:
            return self.cls(config)
        except ValueError as e:  # each key valid, but the combination cannot make this network
            raise ConfigError("model", f"{self.name} cannot be built with these settings: {e}") from None
        except (MemoryError, OverflowError, RuntimeError) as e:  # sizes this machine cannot allocate
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError("model", f"{self.name} cannot be built with these sizes on this machine: {first}") from None


@dataclass(frozen=True)
class TaskEntry:
    name: str
    cls: type
    description: str = ""


class Registry:
    """Name -> entry, with a clear error that lists the known names."""

    def __init__(self, kind: str, package: str):
        self.kind, self.package = kind, package
        self._entries: dict[str, Any] = {}
        self._loaded = False

    def add(self, name: str, entry) -> None:
        if name in self._entries and self._entries[name].cls is not entry.cls:
            raise ValueError(f"{self.kind} {name!r} is already registered by {self._entries[name].cls.__qualname__}")
        self._entries[name] = entry

    def load(self) -> None:
        """Import every module of the package once, so each registers itself."""
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")

    def get(self, name: str, source: str = "config"):
        self.load()
        if name not in self._entries:
            raise ConfigError(source, f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        self.load()
        return name in self._entries

    def names(self) -> list[str]:
        self.load()
        return sorted(self._entries)

    def entries(self) -> list:
        return [self._entries[n] for n in self.names()]


MODELS = Registry("model", "rtgen.models")
TASKS = Registry("task", "rtgen.tasks")


def summary(doc: str | None) -> str:
    """The first line of a class's docstring: what `rtgen models` shows when no description is given."""
    return ((doc or "").strip().splitlines() or [""])[0]


def register_model(name: str, *, config: type, task: str, description: str = "", **presets) -> Callable[[type], type]:
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"model {name!r}: config must be a dataclass, got {config!r}")

    def decorate(cls: type) -> type:
        MODELS.add(name, ModelEntry(name, cls, config, task, dict(presets), description or summary(cls.__doc__)))
        return cls

    return decorate


def register_task(name: str, description: str = "") -> Callable[[type], type]:
    def decorate(cls: type) -> type:
        TASKS.add(name, TaskEntry(name, cls, description or summary(cls.__doc__)))
        cls.name = name
        return cls

    return decorate


def build_model(name: str, **values):
    """A registered network at its default config, with `values` overriding architecture keys."""
    return MODELS.get(name).build(**values)


def parameter_counts(names: list[str] | None = None) -> dict[str, int]:
    """Parameters of registered networks (all, or `names`) at their default config, as `rtgen models`
    lists them. Built on PyTorch's meta device (shapes only, no memory), on the CPU where that fails."""
    import torch

    counts = {}
    for name in names if names is not None else MODELS.names():
        entry = MODELS.get(name)
        try:
            with torch.device("meta"):
                counts[name] = count_parameters(entry.build())
        except Exception:  # noqa: BLE001 (a network whose constructor computes on its weights)
            counts[name] = count_parameters(entry.build())
    return counts


def count_parameters(model) -> int:
    """Trainable numbers of a network; models that are not torch modules (trees) say `n_parameters`."""
    if hasattr(model, "n_parameters"):
        return int(model.n_parameters)
    return sum(p.numel() for p in model.parameters())
