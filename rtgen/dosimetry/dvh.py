"""Dose-volume quantities of one structure. Doses in Gy, volumes in cc or percent.

Dx% follows the OpenKBP convention: the dose received by at least x% of the volume is the
(100 - x)th percentile of the voxel doses with linear interpolation (numpy's default).
"""

from __future__ import annotations

import numpy as np

from rtgen.dosimetry.checks import require_dose


def roi_dose(dose: np.ndarray, mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask, bool)
    if mask.shape != np.shape(dose):
        raise ValueError(f"mask shape {mask.shape} does not match dose shape {np.shape(dose)}")
    values = require_dose(np.asarray(dose)[mask], "dose in structure")
    if values.size == 0:
        raise ValueError("structure is empty")
    return values


def dose_at_volume_percent(values: np.ndarray, percent: float) -> float:
    """D_x%: minimum dose to the hottest `percent` % of the structure."""
    return float(np.percentile(values, 100.0 - percent))


def dose_at_volume_cc(values: np.ndarray, cc: float, voxel_volume_mm3: float) -> float:
    """D_cc as OpenKBP computes D_0.1cc: the hottest max(1, round(cc*1000/voxel volume)) voxels."""
    n = max(1.0, float(np.round(cc * 1000.0 / voxel_volume_mm3)))
    return float(np.percentile(values, 100.0 - n / values.size * 100.0))


def volume_at_dose_percent(values: np.ndarray, gy: float) -> float:
    """V_x Gy in % of the structure: fraction of voxels receiving at least `gy`."""
    return float(np.mean(values >= gy) * 100.0)


def volume_at_dose_cc(values: np.ndarray, gy: float, voxel_volume_mm3: float) -> float:
    return float(np.count_nonzero(values >= gy) * voxel_volume_mm3 / 1000.0)


def dmean(values: np.ndarray) -> float:
    return float(values.mean())


def dmax(values: np.ndarray) -> float:
    return float(values.max())


def cumulative_dvh(values: np.ndarray, bin_width: float = 0.1, max_dose: float | None = None):
    """Cumulative DVH: (dose axis in Gy, % of volume receiving at least that dose)."""
    values = require_dose(values, "DVH input")
    if max_dose is not None:
        require_dose(max_dose, "DVH maximum dose")
    top = float(values.max()) if max_dose is None else float(max_dose)
    edges = np.arange(0.0, top + 2 * bin_width, bin_width)
    counts, _ = np.histogram(values, bins=edges)
    at_least = np.cumsum(counts[::-1])[::-1] / values.size * 100.0
    return edges, np.append(at_least, 0.0)  # the last edge lies above every value
