"""Devices and precision, shared by training and prediction."""

from __future__ import annotations

import contextlib

import torch

from rtgen.core.errors import RtgenError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RtgenError(f"device {name} requested but no CUDA device is available")
    return torch.device(name)


def autocast_for(device: torch.device, enabled: bool = True, cpu: bool = False):
    """bfloat16 autocast on CUDA; on the CPU only when asked (`cpu`), since it pays only on CPUs
    with bf16 units and changes results; full precision elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if cpu and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()
