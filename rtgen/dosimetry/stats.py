"""Paired significance tests between two methods' per-patient scores (scipy)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class PairedComparison:
    n: int
    mean_difference: float  # mean of a - b
    t_statistic: float
    t_pvalue: float
    wilcoxon_statistic: float
    wilcoxon_pvalue: float


def compare_paired(a, b) -> PairedComparison:
    """Paired t-test and Wilcoxon signed-rank test of per-patient scores a vs b (same patient order)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two 1-D score arrays of equal length, got {a.shape} and {b.shape}")
    if a.size < 2:
        raise ValueError("need at least two patients for a paired test")
    t = stats.ttest_rel(a, b)
    diff = a - b
    if np.all(diff == 0):
        w_stat, w_p = 0.0, 1.0
    else:
        w = stats.wilcoxon(a, b)
        w_stat, w_p = float(w.statistic), float(w.pvalue)
    return PairedComparison(a.size, float(diff.mean()), float(t.statistic), float(t.pvalue), w_stat, w_p)
