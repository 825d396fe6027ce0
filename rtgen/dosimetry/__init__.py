"""What a physicist computes from a dose. Pure NumPy (and scipy / pymedphys), no torch."""

from rtgen.dosimetry.dvh import (
    cumulative_dvh,
    dmax,
    dmean,
    dose_at_volume_cc,
    dose_at_volume_percent,
    roi_dose,
    volume_at_dose_cc,
    volume_at_dose_percent,
)
from rtgen.dosimetry.gamma import gamma_pass_rate
from rtgen.dosimetry.indices import homogeneity_index, paddick_conformity_index, structure_mae
from rtgen.dosimetry.openkbp_scores import METRIC_COLUMNS, OpenKBPScores, dose_score, dvh_metrics
from rtgen.dosimetry.stats import PairedComparison, compare_paired

__all__ = [
    "METRIC_COLUMNS", "OpenKBPScores", "PairedComparison", "compare_paired", "cumulative_dvh", "dmax",
    "dmean", "dose_at_volume_cc", "dose_at_volume_percent", "dose_score", "dvh_metrics", "gamma_pass_rate",
    "homogeneity_index", "paddick_conformity_index", "roi_dose", "structure_mae", "volume_at_dose_cc",
    "volume_at_dose_percent",
]
