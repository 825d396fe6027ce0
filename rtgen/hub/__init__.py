"""Models that ship inside rtgen: one folder each (model.safetensors, config.json, MODEL_CARD.md),
listed in manifest.json with their model, task and data, and the default model of each task.
Fixed pretrained components that are not trained models (`taef2/`, the image autoencoder with its
licence) have folders here too but no manifest entry: the code that uses them loads them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from rtgen.core.errors import RtgenError

HUB_FORMAT = "rtgen-hub-1"


@dataclass(frozen=True)
class ShippedModel:
    folder: str
    model: str
    task: str
    data: str
    trained_on: str
    description: str
    summary: str = ""  # one line for the README's model table (rtgen.hub.table)
    validation: dict | None = None  # {"on", "scores": [{"metric", "value", "unit"}], "source", "command"}
    speed: dict | None = None  # {"seconds_per_patient", "machine", "measured"}

    @property
    def path(self) -> Path:
        return hub_dir() / self.folder


def hub_dir() -> Path:
    return Path(str(resources.files("rtgen") / "hub"))


@lru_cache(maxsize=1)
def manifest() -> dict:
    path = hub_dir() / "manifest.json"
    try:
        m = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RtgenError(f"{path}: the shipped-model manifest is unreadable ({e})") from None
    if m.get("format") != HUB_FORMAT:
        raise RtgenError(f"{path}: not an rtgen hub manifest (format {m.get('format')!r})")
    return m


def shipped_models() -> list[ShippedModel]:
    return [ShippedModel(folder, **entry) for folder, entry in manifest()["models"].items()]


def default_model(task: str = "dose") -> str:
    """The folder of the shipped model that the manifest names best for `task`; "dose" is the best
    dose model whatever its task (what `rtgen predict` and `rtgen demo` use without --model)."""
    try:
        return manifest()["default"][task]
    except KeyError:
        raise RtgenError(f"no shipped model for task {task!r}") from None


def shipped_model_dir(name: str = "dose_regression") -> Path:
    """A shipped model's folder, by folder name, by model name (`mamba_unet_v2`, `md_dose`) or by task
    ("dose" names the default dose model)."""
    by_name: dict[str, str] = {}
    for s in shipped_models():  # a model shipped in several folders: the manifest's first, its default
        by_name.setdefault(s.model, s.folder)
    folder = manifest()["default"].get(name) or by_name.get(name, name)
    known = {s.folder for s in shipped_models()}
    if folder not in known:
        raise RtgenError(f"no shipped model {name!r}; shipped: {', '.join(sorted(known))}")
    path = hub_dir() / folder
    if not (path / "config.json").is_file():
        raise RtgenError(f"{path}: the shipped model is missing from this installation")
    return path
