"""An independent re-implementation of the OpenKBP challenge's DoseEvaluator, for cross-checking.

Written from the challenge code's structure, not from rtgen: pandas reads the CSVs into
float64 dense arrays, metrics per ROI in a DataFrame, dose score per patient, then
`np.nanmean` over |reference - prediction| of the whole metric table.
"""

from pathlib import Path

import numpy as np
import pandas as pd

ROIS = {
    "oars": ["Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible"],
    "targets": ["PTV56", "PTV63", "PTV70"],
}


def load_file(path):
    df = pd.read_csv(path, index_col=0)
    if df.isnull().values.any():
        return np.array(df.index).squeeze()
    return pd.Series(df.data.to_numpy(), index=df.index.to_numpy())


def dense(loaded):
    out = np.zeros(128**3)
    if isinstance(loaded, pd.Series):
        np.put(out, loaded.index.values, loaded.values)
    else:
        np.put(out, loaded, 1)
    return out.reshape(128, 128, 128)


def find(folder, stem):
    for s in (".csv", ".csv.gz"):
        if (Path(folder) / f"{stem}{s}").exists():
            return Path(folder) / f"{stem}{s}"
    return None


def metrics(dose, folder):
    voxel_size = np.prod(np.loadtxt(Path(folder) / "voxel_dimensions.csv"))
    tenth_cc = np.maximum(1, np.round(100 / voxel_size))
    out = {}
    for kind, names in ROIS.items():
        for roi in names:
            f = find(folder, roi)
            keys = ["D_0.1_cc", "mean"] if kind == "oars" else ["D_99", "D_95", "D_1"]
            for k in keys:
                out[(k, roi)] = np.nan
            if f is None:
                continue
            mask = dense(load_file(f)).astype(bool)
            if not mask.any():
                continue
            roi_dose = dose[mask]
            for k in keys:
                if k == "D_0.1_cc":
                    out[(k, roi)] = np.percentile(roi_dose, 100 - tenth_cc / roi_dose.size * 100)
                elif k == "mean":
                    out[(k, roi)] = roi_dose.mean()
                elif k == "D_99":
                    out[(k, roi)] = np.percentile(roi_dose, 1)
                elif k == "D_95":
                    out[(k, roi)] = np.percentile(roi_dose, 5)
                elif k == "D_1":
                    out[(k, roi)] = np.percentile(roi_dose, 99)
    return pd.Series(out)


def official_scores(ref_dir, pred_dir):
    ref_rows, pred_rows, dose_errors = {}, {}, {}
    for folder in sorted(p for p in Path(ref_dir).iterdir() if p.is_dir()):
        ref = dense(load_file(find(folder, "dose")))
        pred = dense(load_file(Path(pred_dir) / f"{folder.name}.csv"))
        pdm = dense(load_file(find(folder, "possible_dose_mask")))
        dose_errors[folder.name] = np.sum(np.abs(ref - pred)) / np.sum(pdm)
        ref_rows[folder.name] = metrics(ref, folder)
        pred_rows[folder.name] = metrics(pred, folder)
    ref_df, pred_df = pd.DataFrame(ref_rows).T, pd.DataFrame(pred_rows).T
    return float(np.mean(list(dose_errors.values()))), float(np.nanmean(np.abs(ref_df - pred_df).values))
