"""Image metrics for synthesis (CT to MR and the like): SSIM, PSNR and MSE, over the whole image
and inside a mask (the body), computed with MONAI's SSIM.

SSIM is the mean of 2D SSIM over the slices along the last (axial) axis, with MONAI's Gaussian
window (11 x 11, sigma 1.5), reported in %; PSNR comes from the volume MSE, as the DiffMa paper
reports them. `normalise_percentiles` puts a volume on the 0-255 scale scoring usually uses.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics.regression import compute_ssim_and_cs

WINDOW, SIGMA = 11, 1.5


def normalise_percentiles(volume: np.ndarray, low: float = 0.5, high: float = 99.5, scale: float = 255.0) -> np.ndarray:
    """Clip to the [low, high] percentiles and map linearly to [0, scale]."""
    v = np.asarray(volume, np.float64)
    lo, hi = np.percentile(v, [low, high])
    return (np.clip(v, lo, hi) - lo) / max(hi - lo, 1e-12) * scale


def ssim_map(prediction: np.ndarray, reference: np.ndarray, data_range: float) -> np.ndarray:
    """(K, H - 10, W - 10) SSIM of every axial slice (last axis) at every valid window centre."""
    as_slices = lambda v: torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(v, np.float32), -1, 0)))[:, None]  # noqa: E731
    ssim, _ = compute_ssim_and_cs(as_slices(prediction), as_slices(reference), 2, [WINDOW, WINDOW], [SIGMA, SIGMA],
                                  data_range, "gaussian", 0.01, 0.03)
    return ssim[:, 0].numpy()


def image_metrics(prediction: np.ndarray, reference: np.ndarray, data_range: float = 255.0,
                  mask: np.ndarray | None = None) -> dict[str, float]:
    """SSIM (%), PSNR (dB) and MSE of `prediction` against `reference` (same grid, axial last axis),
    and the same inside `mask` (window centres inside it for SSIM) when one is given."""
    pred, ref = np.asarray(prediction, np.float64), np.asarray(reference, np.float64)
    if pred.shape != ref.shape or pred.ndim != 3:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} must be 3D volumes on one grid")
    smap = ssim_map(pred, ref, data_range)
    out = _scores(smap.mean(axis=(1, 2)).mean(), ((pred - ref) ** 2).mean(), data_range, "")
    if mask is not None:
        m = np.asarray(mask, bool)
        h = WINDOW // 2
        centres = np.moveaxis(m, -1, 0)[:, h:m.shape[0] - h, h:m.shape[1] - h]
        per_slice = [s[c].mean() for s, c in zip(smap, centres) if c.any()]
        out.update(_scores(np.mean(per_slice) if per_slice else np.nan, ((pred - ref)[m] ** 2).mean(), data_range,
                           "_mask"))
    return out


def _scores(ssim: float, mse: float, data_range: float, suffix: str) -> dict[str, float]:
    psnr = float("inf") if mse == 0 else 10.0 * np.log10(data_range**2 / mse)
    return {f"ssim{suffix}": 100.0 * float(ssim), f"psnr{suffix}": float(psnr), f"mse{suffix}": float(mse)}
