"""Gamma pass rate (Low et al. 1998) through pymedphys, the maintained reference implementation."""

from __future__ import annotations

import warnings

import numpy as np

from rtgen.dosimetry.checks import require_dose


def gamma_pass_rate(
    reference: np.ndarray,
    evaluation: np.ndarray,
    spacing,
    dose_percent: float = 3.0,
    distance_mm: float = 3.0,
    cutoff_percent: float = 10.0,
    local: bool = False,
    interp_fraction: int = 10,
) -> float:
    """Percentage of reference voxels above the low-dose cutoff with gamma <= 1.

    Global by default: the dose criterion is `dose_percent` of the reference maximum.
    """
    import pymedphys  # heavy import (numba); only when gamma is asked for

    ref = require_dose(reference, "reference dose")
    ev = require_dose(evaluation, "evaluated dose")
    if ref.shape != ev.shape or ref.ndim != len(spacing):
        raise ValueError(f"shapes {ref.shape} and {ev.shape} must match and have {len(spacing)} axes")
    if ref.max() <= 0:
        raise ValueError("reference dose is zero everywhere")
    axes = tuple(np.arange(n) * float(s) for n, s in zip(ref.shape, spacing))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        gamma = pymedphys.gamma(
            axes, ref, axes, ev, dose_percent, distance_mm,
            lower_percent_dose_cutoff=cutoff_percent, local_gamma=local,
            interp_fraction=interp_fraction, max_gamma=1.1, skip_once_passed=True, quiet=True,
        )
    valid = gamma[~np.isnan(gamma)]
    return float(np.mean(valid <= 1.0) * 100.0) if valid.size else float("nan")
