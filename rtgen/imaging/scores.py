"""DiffMa scoring of a synthetic MR against the real one, as the DiffMa paper reports it.

Each volume (prediction and reference, separately) is clipped to its own 0.5 and 99.5 percentiles
and mapped to 0-255, because MR has no absolute unit: a synthesis is judged on contrast, not scale.
Then SSIM (%) is the mean 2D SSIM over axial slices and PSNR comes from the volume MSE (data range
255), and both again within a body mask. The arithmetic (MONAI's SSIM, 11 x 11 Gaussian window,
sigma 1.5) is `rtgen.imaging.similarity.image_metrics`; this module fixes the protocol around it.
"""

from __future__ import annotations

import numpy as np

from rtgen.core.errors import RtgenError
from rtgen.imaging.similarity import image_metrics, normalise_percentiles

SCORE_PERCENTILES = (0.5, 99.5)
DATA_RANGE = 255.0


def image_scores(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None, slice_axis: int = -1,
                 percentiles: tuple[float, float] | None = SCORE_PERCENTILES,
                 data_range: float = DATA_RANGE) -> dict[str, float]:
    """SSIM (%), PSNR (dB) and MSE of `pred` against `ref` (3D, one grid, 2D slices along `slice_axis`;
    rtgen's NIfTI volumes are (x, y, z), so the default -1 is axial), plus `ssim_body`, `psnr_body`
    and `mse_body` inside `mask` when one is given.

    With `percentiles` (the default), each volume is first normalised to [0, data_range] by its own
    percentiles; with None the volumes are scored as given and must already span [0, data_range].
    Identical volumes give SSIM 100, MSE 0 and PSNR inf (no cap). SSIM inside the mask is the mean of
    each slice's SSIM map over its body voxels (window centres more than 5 voxels from the slice edge),
    averaged over the slices that hold body; MSE and PSNR inside it are over the body voxels."""
    p, r = np.asarray(pred, np.float64), np.asarray(ref, np.float64)
    if p.ndim != 3 or p.shape != r.shape:
        raise RtgenError(f"image scores: prediction {p.shape} and reference {r.shape} must be 3D volumes on one grid")
    if not (np.isfinite(p).all() and np.isfinite(r).all()):
        raise RtgenError("image scores: the prediction or the reference holds NaN or infinite values")
    if min(np.delete(p.shape, slice_axis % 3)) < 11:
        raise RtgenError(f"image scores: slices of {p.shape} along axis {slice_axis} are smaller than the "
                         f"11 x 11 SSIM window")
    m = None
    if mask is not None:
        m = np.asarray(mask, bool)
        if m.shape != p.shape:
            raise RtgenError(f"image scores: mask {m.shape} is not on the volumes' grid {p.shape}")
        if not m.any():
            raise RtgenError("image scores: the body mask is empty")
        m = np.moveaxis(m, slice_axis, -1)
    if percentiles is not None:
        p, r = (normalise_percentiles(v, *percentiles, scale=data_range) for v in (p, r))
    out = image_metrics(np.moveaxis(p, slice_axis, -1), np.moveaxis(r, slice_axis, -1), data_range, m)
    return {k.replace("_mask", "_body"): v for k, v in out.items()}
