"""Recompute BatchNorm running statistics of a trained network from training inputs.

Weights averaged over training (EMA, SWA) need BatchNorm statistics that match them; a copy whose
buffers were not averaged keeps stale ones. `torch.optim.swa_utils.update_bn` re-estimates them as
plain averages over a pass of inputs in train mode, without touching any weight.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch.optim.swa_utils import update_bn


def has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, images: Iterable[np.ndarray], batch_size: int = 32,
                          device: torch.device | str = "cpu") -> int:
    """Re-estimate every BatchNorm's running mean/var over `images` ((K, C, H, W) arrays, e.g. one per
    patient), in batches; returns the number of slices seen. The model is left in eval mode."""
    batches = []
    for arr in images:
        for i in range(0, len(arr), batch_size):
            batches.append(torch.as_tensor(np.asarray(arr[i:i + batch_size], dtype=np.float32)))
    if not batches:
        raise ValueError("no input slices to recalibrate BatchNorm with")
    model.to(device)
    update_bn(batches, model, device=torch.device(device))
    model.eval()
    return sum(len(b) for b in batches)
