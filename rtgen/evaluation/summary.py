"""Per-patient summary a physicist reads first: structures, spacing, dose statistics, plan DVH metrics."""

from __future__ import annotations

import numpy as np

from rtgen.core.structures import PRESCRIPTION_GY, STRUCTURES, is_target
from rtgen.data.records import Patient
from rtgen.dosimetry import dvh_metrics, homogeneity_index, paddick_conformity_index


def summarize(patient: Patient) -> dict:
    """A JSON-friendly summary; DVH metrics only when the patient has a dose."""
    s = {
        "patient": patient.id,
        "spacing_mm": list(patient.spacing),
        "grid": list(patient.possible_dose_mask.shape),
        "possible_dose_mask_cc": float(patient.possible_dose_mask.sum() * patient.voxel_volume_mm3 / 1000),
        "structures": {n: {"volume_cc": patient.volume_cc(n)} for n in STRUCTURES if n in patient.structures},
    }
    if patient.ct is not None:
        s["ct_hu_range"] = [int(patient.ct.min()), int(patient.ct.max())]
    if patient.dose is None:
        return s
    d = patient.dose
    inside = d[patient.possible_dose_mask]
    s["dose"] = {"max_gy": float(d.max()), "mean_in_possible_dose_mask_gy": float(inside.mean()) if inside.size else 0.0}
    metrics = dvh_metrics(d, patient.structures, patient.voxel_volume_mm3)
    for (metric, name), value in metrics.items():
        s["structures"][name][metric] = value
    for name in patient.structures:
        if is_target(name) and patient.structures[name].any():
            s["structures"][name]["HI"] = homogeneity_index(d, patient.structures[name])
            s["structures"][name]["Paddick_CI"] = paddick_conformity_index(
                d, patient.structures[name], PRESCRIPTION_GY[name]
            )
    return s


def summary_rows(summary: dict) -> list[list[str]]:
    """Table rows: structure, volume, and the metrics that apply to it."""
    rows = []
    for name, m in summary["structures"].items():
        def fmt(k):
            return f"{m[k]:.2f}" if k in m and np.isfinite(m[k]) else "-"
        rows.append([name, f"{m['volume_cc']:.1f}", fmt("mean"), fmt("D_0.1_cc"), fmt("D_99"), fmt("D_95"), fmt("D_1"), fmt("HI"), fmt("Paddick_CI")])
    return rows


SUMMARY_COLUMNS = ["structure", "cc", "Dmean", "D0.1cc", "D99", "D95", "D1", "HI", "CI@Rx"]
