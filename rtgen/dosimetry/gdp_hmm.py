"""The GDP-HMM challenge's dose error: voxelwise MAE inside the body over the voxels that matter.

Source: the GDP-HMM Grand Challenge (AAPM 2025, "Generalizable dose prediction for heterogeneous
multi-cohort and multi-site radiotherapy planning") and its data paper, "Automating RT planning at
scale: high quality data for AI training" (arXiv:2501.11803, ref [13] of the DiffKT3D paper,
which scores with "voxelwise MAE within the body mask with a 5 Gy threshold"):

    selected = body & ((reference > threshold) | (prediction > threshold))
    MAE      = mean(|reference - prediction|) over the selected voxels

so the large low-dose bath, where both doses are below the threshold (5 Gy by default), does not
dilute the error, and a prediction that puts dose where the reference has none is still counted.
"exceeds" is strict (`>`), as in the challenge's evaluation code.

An empty selection (a non-empty body in which both doses stay at or below the threshold) gives
0.0, without a warning: the two doses agree that no voxel reaches the threshold, so nothing is
scored; this keeps batch evaluation and RL reward loops quiet. An empty body mask is an input
error and raises `MaskError` (a `ValueError`).

Pure NumPy. rtgen's OpenKBP evaluation passes the OpenKBP possible dose mask as the body mask.
"""

from __future__ import annotations

import math

import numpy as np

from rtgen.core.errors import RtgenError, ValueRangeError
from rtgen.dosimetry.checks import require_dose

GDP_HMM_THRESHOLD_GY = 5.0
"""The challenge's threshold: voxels where neither dose exceeds it are not scored."""


class MaskError(RtgenError, ValueError):
    """Doses and body mask on different grids, or an empty body mask."""


def gdp_hmm_mae(reference: np.ndarray, prediction: np.ndarray, body_mask: np.ndarray | None = None,
                threshold_gy: float = GDP_HMM_THRESHOLD_GY) -> float:
    """GDP-HMM MAE in Gy: mean |reference - prediction| over body voxels where either dose > `threshold_gy`.

    `body_mask` None scores the whole grid. Empty selection -> 0.0 (see the module docstring)."""
    if not isinstance(threshold_gy, (int, float, np.floating, np.integer)) or not math.isfinite(threshold_gy) \
            or threshold_gy < 0:
        raise ValueRangeError(f"GDP-HMM threshold must be a finite dose >= 0 Gy, got {threshold_gy!r}")
    ref = require_dose(reference, "reference dose")
    pred = require_dose(prediction, "predicted dose")
    if ref.shape != pred.shape:
        raise MaskError(f"prediction shape {pred.shape} does not match reference {ref.shape}")
    selected = (ref > threshold_gy) | (pred > threshold_gy)
    if body_mask is not None:
        body = np.asarray(body_mask, bool)
        if body.shape != ref.shape:
            raise MaskError(f"body mask shape {body.shape} does not match dose shape {ref.shape}")
        if not body.any():
            raise MaskError("body mask is empty")
        selected &= body
    n = np.count_nonzero(selected)
    if n == 0:
        return 0.0
    return float(np.abs(ref[selected] - pred[selected]).sum() / n)
