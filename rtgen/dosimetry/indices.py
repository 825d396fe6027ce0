"""Plan-quality indices a physicist reports beside the DVH."""

from __future__ import annotations

import numpy as np

from rtgen.dosimetry.checks import require_dose
from rtgen.dosimetry.dvh import dose_at_volume_percent, roi_dose


def homogeneity_index(dose: np.ndarray, target: np.ndarray) -> float:
    """ICRU 83: (D2% - D98%) / D50%; 0 is perfectly homogeneous."""
    values = roi_dose(dose, target)
    d50 = dose_at_volume_percent(values, 50)
    if d50 <= 0:
        return float("nan")
    return (dose_at_volume_percent(values, 2) - dose_at_volume_percent(values, 98)) / d50


def paddick_conformity_index(dose: np.ndarray, target: np.ndarray, isodose_gy: float) -> float:
    """Paddick CI = TV_PIV^2 / (TV * PIV) at the chosen isodose; 1 is perfect conformity."""
    target = np.asarray(target, bool)
    piv_mask = require_dose(dose) >= isodose_gy
    tv = np.count_nonzero(target)
    piv = np.count_nonzero(piv_mask)
    if tv == 0 or piv == 0:
        return 0.0
    tv_piv = np.count_nonzero(target & piv_mask)
    return tv_piv**2 / (tv * piv)


def structure_mae(reference: np.ndarray, prediction: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute dose error inside one structure (Gy)."""
    mask = np.asarray(mask, bool)
    diff = np.abs(require_dose(np.asarray(reference)[mask], "reference dose")
                  - require_dose(np.asarray(prediction)[mask], "predicted dose"))
    return float(diff.mean()) if diff.size else float("nan")
