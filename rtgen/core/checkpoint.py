"""Checkpoints without pickle: weights in safetensors, everything else in JSON.

A run directory holds `model.safetensors` (best weights), `config.json` (architecture, feature
and normalisation settings, rtgen version, data summary, validation scores), `MODEL_CARD.md`,
and for resuming `last/` with `model.safetensors`, `training_state.safetensors` (optimiser,
EMA, RNG tensors) and `training_state.json` (the nested structure and plain numbers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rtgen import __version__
from rtgen.core.atomic import atomic_path, atomic_write_text
from rtgen.core.errors import RtgenError

CHECKPOINT_FORMAT = "rtgen-checkpoint-1"


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": CHECKPOINT_FORMAT, **(metadata or {})})
    return Path(path)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise RtgenError(f"{path}: checkpoint file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise RtgenError(f"{path}: not a valid safetensors checkpoint ({e})") from None


WEIGHT_FILES = ("model.safetensors", "model.txt")
"""Network weights (safetensors) or a gradient-boosted model (LightGBM text); never a pickle."""


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """A run directory or a weights file -> (weights, config.json beside them)."""
    path = Path(path)
    if path.is_dir():
        weights = next((path / n for n in WEIGHT_FILES if (path / n).is_file()), path / WEIGHT_FILES[0])
    else:
        weights = path
    config = weights.parent / "config.json"
    if not weights.is_file():
        raise RtgenError(f"{path}: no {' or '.join(WEIGHT_FILES)} found")
    if not config.is_file():
        raise RtgenError(f"{config}: missing; a checkpoint needs its config.json beside the weights")
    return weights, config


def read_config(path: str | Path) -> dict:
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RtgenError(f"{path}: not a readable JSON config ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != CHECKPOINT_FORMAT or "model" not in cfg:
        raise RtgenError(f"{path}: not an rtgen checkpoint config (expected format {CHECKPOINT_FORMAT!r} and a model)")
    return cfg


def check_and_load(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load weights into `model`, naming every mismatch instead of a bare traceback."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} with the wrong shape (e.g. {'; '.join(shapes[:3])})")
        raise RtgenError(f"{source}: weights do not fit the architecture in config.json: " + ", ".join(parts))
    model.load_state_dict(state)


def write_config(path: str | Path, config: dict) -> None:
    atomic_write_text(path, json.dumps({"format": CHECKPOINT_FORMAT, "rtgen_version": __version__, **config},
                                       indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


# ---------------------------------------------------------------- training state (resume), no pickle


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors and arrays by references into `tensors`; keep the rest JSON-able."""
    if isinstance(obj, torch.Tensor):
        key = prefix or "root"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = prefix or "root"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"__ndarray__": key, "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        return {"__dict__": [[_flatten(k, f"{prefix}.k{i}", tensors), _flatten(v, f"{prefix}.{i}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a training state")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy().astype(obj["dtype"])
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_state(folder: str | Path, state: dict) -> None:
    """Save a nested training state (optimiser, scheduler, RNG, counters) as safetensors + JSON."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(state, "", tensors)
    with atomic_path(folder / "training_state.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": CHECKPOINT_FORMAT})
    atomic_write_text(folder / "training_state.json", json.dumps(structure) + "\n")


def load_state(folder: str | Path) -> dict:
    folder = Path(folder)
    tensors = load_weights(folder / "training_state.safetensors")
    try:
        structure = json.loads((folder / "training_state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RtgenError(f"{folder / 'training_state.json'}: not a readable training state ({e})") from None
    return _unflatten(structure, tensors)
