"""Training configuration: a YAML file validated into typed objects, with `key=value` overrides.

    rtgen train configs/mamba_unet_v2.yaml train.epochs=50 model.channels=[16,32,64,128]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rtgen.data.features import FeatureConfig
from rtgen.errors import RtgenError
from rtgen.tasks import MODEL_NAMES, DiffusionConfig


@dataclass
class DataConfig:
    train: str = ""  # split folder: pt_* CSV folders, .npz caches or NIfTI caches
    val: str = ""
    max_train_patients: int | None = None
    max_val_patients: int | None = None
    augment: bool = True
    num_workers: int = 0
    feature_workers: int = 2  # processes computing input features (distance maps) at start-up


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-2
    warmup_steps: int = 500
    grad_clip: float = 1.0
    amp: bool = True  # bfloat16 autocast, CUDA only
    ema_decay: float | None = None  # e.g. 0.999; None disables
    patience: int = 10  # early stopping, in epochs without a better validation dose score
    seed: int = 0
    device: str = "auto"
    max_steps_per_epoch: int | None = None
    val_batch_size: int = 32
    out: str = "runs/run"


@dataclass
class RunConfig:
    model: dict = field(default_factory=lambda: {"name": "mamba_unet_v2"})
    features: FeatureConfig = field(default_factory=FeatureConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)  # used by diffusion models only

    def to_dict(self) -> dict:
        return {
            "diffusion": self.diffusion.to_dict(),
            "model": dict(self.model),
            "features": self.features.to_dict(),
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
        }


def _typed(cls, values: dict, where: str, source: str):
    if not isinstance(values, dict):
        raise RtgenError(f"{source}: section {where!r} must be a mapping")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise RtgenError(f"{source}: unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}; known: {sorted(names)}")
    try:
        return cls.from_dict(values) if hasattr(cls, "from_dict") else cls(**values)
    except (TypeError, ValueError) as e:
        raise RtgenError(f"{source}: invalid {where} section ({e})") from None


def from_dict(raw: dict, source: str = "config") -> RunConfig:
    if not isinstance(raw, dict):
        raise RtgenError(f"{source}: a training config must be a mapping")
    unknown = sorted(set(raw) - {"model", "features", "data", "train", "diffusion"})
    if unknown:
        raise RtgenError(f"{source}: unknown section(s) {unknown}; known: model, features, data, train, diffusion")
    model = dict(raw.get("model") or {})
    if model.get("name") not in MODEL_NAMES:
        raise RtgenError(f"{source}: model.name must be one of {sorted(MODEL_NAMES)}, got {model.get('name')!r}")
    cfg = RunConfig(
        model=model,
        features=_typed(FeatureConfig, raw.get("features") or {}, "features", source),
        data=_typed(DataConfig, raw.get("data") or {}, "data", source),
        train=_typed(TrainConfig, raw.get("train") or {}, "train", source),
        diffusion=_typed(DiffusionConfig, raw.get("diffusion") or {}, "diffusion", source),
    )
    try:
        from rtgen.tasks import make_task

        make_task(cfg.model, cfg.diffusion, cfg.features.n_channels)
    except (TypeError, ValueError) as e:
        raise RtgenError(f"{source}: invalid model section ({e})") from None
    for k, v in dataclasses.asdict(cfg.train).items():
        if k in ("lr", "weight_decay", "grad_clip") and not isinstance(v, (int, float)):
            raise RtgenError(f"{source}: train.{k} must be a number, got {v!r}")
    return cfg


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`section.key=value` (value parsed as YAML) into a copy of `raw`."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides:
        if "=" not in item:
            raise RtgenError(f"override {item!r} is not of the form section.key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise RtgenError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise RtgenError(f"{path}: cannot be read ({e})") from None
    except yaml.YAMLError as e:
        raise RtgenError(f"{path}: not valid YAML ({e})") from None
    return from_dict(apply_overrides(raw, list(overrides)), str(path))


def save_config(cfg: RunConfig, path: str | Path) -> None:
    from rtgen.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(_plain(cfg.to_dict()), sort_keys=False))


def _plain(o: Any):
    if isinstance(o, dict):
        return {k: _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    return o
