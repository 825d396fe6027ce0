"""LoRA adapters for post-training (ScardNFT, DiffKT3D app. B.5: rank 64 on attention and feed-forward layers,
base frozen, adapters and modulation trained), on top of peft, imported lazily.

peft's `inject_adapter_in_model` works on any `nn.Module` (no transformers model needed): each targeted
layer (Linear, Conv1d/2d/3d, Embedding) is wrapped in place by a peft LoRA layer holding the original as
`base_layer`, so its parameters are renamed `<name>.base_layer.weight` and the adapters are
`<name>.lora_A.<adapter>.weight` / `lora_B`. Load base checkpoints *before* `add_lora`; `merge_lora`
folds the adapters in and restores the original module tree (and state-dict names).

`target_modules` are name suffixes on dot boundaries, peft's rule: "qkv" matches "blocks.3.attn.qkv" but
not "blocks.3.attn.to_qkv"; "ffn.0" matches "blocks.3.ffn.0".
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
import torch.nn as nn

LORA_MARKERS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")


def _peft():
    try:
        import peft
    except ImportError as e:  # pragma: no cover - exercised only where peft is absent
        raise ImportError("LoRA needs peft: pip install peft") from e
    return peft


def is_lora_name(name: str) -> bool:
    """Whether a parameter / state-dict name belongs to a LoRA adapter."""
    return any(f".{m}." in f".{name}." for m in LORA_MARKERS)


def add_lora(model: nn.Module, rank: int = 64, alpha: float | None = None, target_modules: Iterable[str] = ("qkv", "out"),
             dropout: float = 0.0, adapter_name: str = "default") -> nn.Module:
    """Insert LoRA adapters (B zero-initialised, so the output is unchanged) into the modules whose names end
    with one of `target_modules`; scale alpha / rank (alpha None: rank, i.e. scale 1). In place; returns
    `model`. peft then freezes everything else; see `freeze_base` to train extra modules too.
    """
    peft = _peft()
    targets = list(target_modules)
    if not targets:
        raise ValueError("target_modules is empty")
    cfg = peft.LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, target_modules=targets,
                          lora_dropout=dropout, bias="none", init_lora_weights=True)
    return peft.inject_adapter_in_model(cfg, model, adapter_name=adapter_name)


def freeze_base(model: nn.Module, trainable: Iterable[str] = ()) -> list[str]:
    """Freeze every parameter except the LoRA adapters and those whose name matches (re.search) one of the
    `trainable` patterns, e.g. ("modulation",). Returns the names left trainable."""
    pats = [re.compile(p) for p in trainable]
    names = []
    for name, p in model.named_parameters():
        p.requires_grad_(is_lora_name(name) or any(pat.search(name) for pat in pats))
        if p.requires_grad:
            names.append(name)
    return names


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only, under the model's own (dotted) names; detached clones."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if is_lora_name(k)}


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load adapters saved by `lora_state_dict` into a model with the same `add_lora`; strict on adapters:
    every adapter tensor of the model must be given, and nothing else."""
    own = {k for k in model.state_dict() if is_lora_name(k)}
    missing, unexpected = own - set(state), set(state) - own
    if missing or unexpected:
        raise KeyError(f"LoRA state mismatch: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.load_state_dict(state, strict=False)


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


@torch.no_grad()
def merge_lora(model: nn.Module, unload: bool = True) -> nn.Module:
    """Fold the adapters into the base weights. With `unload` (default) each wrapper is replaced by its base
    layer, giving back the original module tree and state-dict names; else the wrappers stay, merged (peft
    can `unmerge` them). In place; returns `model`."""
    _peft()
    for name, layer in lora_layers(model):
        layer.merge()
        if unload:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, layer.get_base_layer())
    if unload and hasattr(model, "peft_config"):
        del model.peft_config
    return model


__all__ = ["add_lora", "freeze_base", "is_lora_name", "load_lora_state_dict", "lora_layers", "lora_state_dict", "merge_lora"]
