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


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Put a conv net's weights in channels-last order (`channels_last_3d` for 3D convs), so oneDNN
    picks its blocked NHWC kernels and activations follow; models without convs are left alone."""
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    if any(isinstance(m, torch.nn.Conv3d) for m in convs):
        for m in convs:
            if isinstance(m, torch.nn.Conv3d):
                m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last_3d)
    elif convs:
        model.to(memory_format=torch.channels_last)
    return model
