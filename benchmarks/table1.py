"""Table I of the MambaUNetV2 paper (Regmi and Belbase, "Integrating Mamba V2 into UNet for High-Fidelity
Radiation Dose Prediction") at CPU size: mamba_unet_v2, unet and transformer_unet trained alike.

    python benchmarks/table1.py --train data/openkbp/train-pats --val data/openkbp/validation-pats \
        [--epochs 8] [--out runs/table1] [--also "shipped=hub:mamba_unet_v2_openkbp"]
    python benchmarks/table1.py --smoke

Trains each model with `rtgen train configs/NAME_cpu.yaml` (same features, data order, seed, steps,
optimiser and schedule; a model whose RUN/model.safetensors exists is not retrained), then predicts
every validation patient with each best checkpoint and prints Table I's metrics: OpenKBP dose and DVH
scores, PTV70 D95 as % of 70 Gy and the ICRU 83 homogeneity index (mean over patients, reference
first), with parameters and training time, then paired tests of the per-patient dose errors.
Peak training memory: benchmarks/bench_train_predict.py. `--smoke` checks the three training
commands (each config loads with its overrides) without running them and scores the shipped
MambaUNetV2 alone on 4 slices of one bundled patient.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import common
import numpy as np
from tqdm.auto import tqdm

from rtgen.bench.ssm import machine_description
from rtgen.data.datasets.dose_slices import patient_slices
from rtgen.data.sources import find_patients, load_patient
from rtgen.dosimetry import (
    OpenKBPScores,
    compare_paired,
    dose_at_volume_percent,
    homogeneity_index,
    roi_dose,
)
from rtgen.inference import load_predictor, resolve_model

MODELS = ("unet", "transformer_unet", "mamba_unet_v2")
PAPER = {"unet": (2.13, 94.7, 0.12), "transformer_unet": (1.92, 95.1, 0.09), "mamba_unet_v2": (1.87, 96.2, 0.08)}


def train(name: str, a) -> Path:
    """`rtgen train configs/NAME{suffix}.yaml` with the table's overrides, unless its run exists."""
    run = Path(a.out) / name
    config = common.REPO / "configs" / f"{name}{a.config_suffix}.yaml"
    overrides = [f"data.train={a.train}", f"data.val={a.val}", f"train.epochs={a.epochs}", f"train.out={run}",
                 *a.override]
    if a.smoke:  # the command's config and overrides are checked, nothing is trained
        from rtgen.engine.config import load_config

        load_config(config, overrides)
        print(f"checked: rtgen train {config.relative_to(common.REPO)} {' '.join(overrides)}")
        return run
    if (run / "model.safetensors").is_file():
        print(f"{run}: already trained, not retraining")
        return run
    cmd = [sys.executable, "-m", "rtgen", "train", str(config), *overrides]
    print(" ".join(["rtgen", *cmd[3:]]), flush=True)
    subprocess.run(cmd, check=True)
    return run


def ptv70_metrics(patient, dose) -> tuple[float, float]:
    """(D95 as % of 70 Gy, HI) of PTV70, or NaNs if the patient has none."""
    mask = patient.structures.get("PTV70")
    if mask is None or not mask.any():
        return float("nan"), float("nan")
    return dose_at_volume_percent(roi_dose(dose, mask), 95) / 70 * 100, homogeneity_index(dose, mask)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", help="training split folder")
    ap.add_argument("--val", help="validation split folder (selection and scores)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--out", default="runs/table1")
    ap.add_argument("--config-suffix", default="_cpu", help="configs/NAME{suffix}.yaml; '' for the paper size")
    ap.add_argument("--override", nargs="*", default=[], help="extra key=value for every run")
    ap.add_argument("--also", nargs="*", default=[], metavar="LABEL=RUN",
                    help="other checkpoints scored alongside, e.g. the shipped model")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu", help="for scoring; training follows each config")
    ap.add_argument("--limit", type=int, default=None, help="first N validation patients")
    ap.add_argument("--smoke", action="store_true",
                    help="seconds: check the training commands, score the shipped model on one bundled patient")
    a = ap.parse_args(argv)
    if a.smoke:
        a.train, a.val, a.out, a.limit = a.train or "data/openkbp/train-pats", a.val or common.bundled_openkbp(), \
            common.smoke_dir("table1"), 1
    if not a.train or not a.val:
        ap.error("--train and --val are required (or --smoke)")
    runs = {name: train(name, a) for name in MODELS}
    if a.smoke:
        runs, a.also = {}, a.also or ["shipped mamba_unet_v2=hub:mamba_unet_v2_openkbp"]
    runs.update(dict(item.split("=", 1) for item in a.also))
    runs = {label: resolve_model(run) for label, run in runs.items()}

    paths = find_patients(a.val)[: a.limit]
    refs = [load_patient(p) for p in tqdm(paths, desc="reading validation", unit="patient")]
    rows = {"reference (clinical plans)": [ptv70_metrics(r, r.dose) for r in refs]}
    info, per_patient, slices, features = {}, {}, None, None
    for name, run in runs.items():
        pred = load_predictor(run, a.device)
        if pred.features != features:  # the three configs share one feature set: computed once
            features = pred.features
            slices = [patient_slices(r, features, storage_dtype=np.float32)
                      for r in tqdm(refs, desc="features", unit="patient")]
            if a.smoke:
                slices = [common.central_slices(ps, 4) for ps in slices]
        scores, ptv = OpenKBPScores(), []
        for ref, ps in tqdm(list(zip(refs, slices)), desc=name, unit="patient"):
            dose = pred.predict_slices(ps, a.batch_size)[0]
            scores.add(ref.id, ref.dose, dose, ref.possible_dose_mask, ref.structures, ref.voxel_volume_mm3)
            ptv.append(ptv70_metrics(ref, dose))
        rows[name] = ptv
        per_patient[name] = [p.dose_error for p in scores.patients]
        cfg = json.loads((run / "config.json").read_text())
        info[name] = (scores.dose_score, scores.dvh_score, cfg["model"]["parameters"], cfg["training"]["seconds"],
                      cfg["validation"]["epoch"], cfg["training"]["epochs_run"])

    print(f"\nmachine: {machine_description(a.device)}")
    print(f"{len(refs)} validation patients; each model trained on {a.train} for {a.epochs} epochs with "
          f"configs/NAME{a.config_suffix}.yaml, best epoch by validation dose score, no flips")
    print(f"{'model':<34}{'params':>9}{'train min':>10}{'best ep':>8}{'dose score':>11}{'DVH score':>10}"
          f"{'PTV70 D95 %':>12}{'PTV70 HI':>9}   paper (dose, D95 %, HI)")
    for label, ptv in rows.items():
        d95, hi = np.nanmean(np.array(ptv), axis=0)
        if label in info:
            ds, vs, params, sec, ep, ran = info[label]
            p = ", ".join(f"{x:g}" for x in PAPER.get(label, ()))
            print(f"{label:<34}{params / 1e6:>8.2f}M{sec / 60:>10.1f}{f'{ep}/{ran}':>8}{ds:>11.3f}{vs:>10.3f}"
                  f"{d95:>12.1f}{hi:>9.3f}   {p}")
        else:
            print(f"{label:<34}{'':>9}{'':>10}{'':>8}{'':>11}{'':>10}{d95:>12.1f}{hi:>9.3f}")
    if "mamba_unet_v2" not in per_patient:
        return 0
    print("\nPaired tests of per-patient dose errors (Gy), mamba_unet_v2 minus each other model:")
    for label, errors in per_patient.items():
        if label != "mamba_unet_v2":
            c = compare_paired(per_patient["mamba_unet_v2"], errors)
            print(f"  vs {label:<32} mean difference {c.mean_difference:+.3f}  paired t p = {c.t_pvalue:.3f}"
                  f"  Wilcoxon p = {c.wilcoxon_pvalue:.3f}  (n = {c.n})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
