"""MD-Dose steps versus accuracy on validation patients, and against regression models.

    python benchmarks/bench_samplers.py --model hub:md_dose_openkbp --patients data/openkbp/validation-pats \
        [--limit 6] [--ddpm-limit 2] [--steps 50 20 10 5] [--compare hub:mamba_unet_v2_openkbp]
    python benchmarks/bench_samplers.py --smoke

Every sampler setting predicts the same patients from the same seed (one sample, no flips):
DDPM ancestral with 1,000 steps (the MD-Dose paper's sampler; on the first `--ddpm-limit` patients only,
because it is 100-200x slower) and DDIM (eta 0) and DPM-Solver++ (2M) at each of `--steps`.
Regression checkpoints given with `--compare` predict the same patients. Columns: OpenKBP dose
score and DVH score (Gy), mean |HI error| over the PTVs (ICRU 83), and seconds per patient spent
in the network and sampler and assembling the volume (input features are computed once per patient
and not counted).
A second table repeats every setting on the DDPM subset, with its ratios to DDPM-1000:
dose score / DDPM-1000 dose score and DDPM-1000 time / time.
`--smoke` runs the shipped MD-Dose on 4 central slices of one bundled patient, DDIM and
DPM-Solver++ with one step each, no DDPM.
"""

from __future__ import annotations

import argparse
import time

import common
import numpy as np
import torch
from tqdm.auto import tqdm

from rtgen.bench.ssm import machine_description
from rtgen.core.structures import TARGETS
from rtgen.data.datasets.dose_slices import patient_slices
from rtgen.data.sources import find_patients, load_patient
from rtgen.dosimetry import OpenKBPScores
from rtgen.evaluation import homogeneity_by_target
from rtgen.inference import load_predictor, resolve_model
from rtgen.tasks.dose_base import SamplingConfig


def hi_error(ref, dose) -> float:
    """Mean |HI(pred) - HI(ref)| over the patient's PTVs."""
    hi = homogeneity_by_target(ref, dose)
    errs = [abs(hi[f"{t}_ref"] - hi[f"{t}_pred"]) for t in TARGETS if f"{t}_ref" in hi]
    return float(np.nanmean(errs)) if errs else float("nan")


def run_setting(pred, slices, refs, sampling, batch_size):
    """Per patient: (dose error, list of DVH errors, HI error, seconds in network and sampler)."""
    rows = []
    for ps, ref in zip(slices, refs):
        t0 = time.perf_counter()
        vol = pred.predict_slices(ps, batch_size, sampling=sampling).mean(0)
        seconds = time.perf_counter() - t0
        s = OpenKBPScores()
        score = s.add(ref.id, ref.dose, vol, ref.possible_dose_mask, ref.structures, ref.voxel_volume_mm3)
        rows.append((score.dose_error, list(score.dvh_errors.values()), hi_error(ref, vol), seconds))
    return rows


def summarise(rows):
    return (float(np.mean([r[0] for r in rows])), float(np.mean([e for r in rows for e in r[1]])),
            float(np.nanmean([r[2] for r in rows])), float(np.mean([r[3] for r in rows])))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="MD-Dose run directory, model.safetensors or hub:NAME")
    ap.add_argument("--patients", help="validation split folder")
    ap.add_argument("--limit", type=int, default=6, help="first N validation patients")
    ap.add_argument("--ddpm-limit", type=int, default=2, help="first N of those also get DDPM-1000")
    ap.add_argument("--steps", type=int, nargs="+", default=[50, 20, 10, 5])
    ap.add_argument("--compare", nargs="*", default=[], help="regression checkpoints on the same patients")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--smoke", action="store_true", help="seconds: the shipped MD-Dose, 4 slices of a bundled patient")
    a = ap.parse_args(argv)
    if a.smoke:
        a.model, a.patients = a.model or "hub:md_dose_openkbp", a.patients or common.bundled_openkbp()
        a.limit, a.ddpm_limit, a.steps = 1, 0, [1]
    if not a.model or not a.patients:
        ap.error("--model and --patients are required (or --smoke)")
    torch.manual_seed(a.seed)
    pred = load_predictor(resolve_model(a.model), a.device)
    if pred.task.diffusion is None:
        raise SystemExit(f"{a.model}: not a diffusion checkpoint")
    paths = find_patients(a.patients)[:a.limit]
    refs = [load_patient(p) for p in tqdm(paths, desc="reading", unit="patient")]
    slices = [patient_slices(r, pred.features, storage_dtype=np.float32) for r in refs]
    if a.smoke:
        slices = [common.central_slices(ps, 4) for ps in slices]
    n_ddpm = min(a.ddpm_limit, len(paths))

    settings = [("DDPM 1000", SamplingConfig("ddpm", 1000, 1, a.seed), n_ddpm)] if n_ddpm else []
    for sampler, label in (("ddim", "DDIM"), ("dpmpp", "DPM-Solver++")):
        settings += [(f"{label} {s}", SamplingConfig(sampler, s, 1, a.seed), len(paths)) for s in a.steps]
    results = {}
    for label, sampling, n in tqdm(settings, desc="settings", unit="setting"):
        results[label] = run_setting(pred, slices[:n], refs[:n], sampling, a.batch_size)
    for path in a.compare:
        reg = load_predictor(resolve_model(path), a.device)
        reg_slices = [patient_slices(r, reg.features, storage_dtype=np.float32) for r in refs]
        results[f"{reg.config['model']['name']} (regression)"] = run_setting(reg, reg_slices, refs, None, a.batch_size)

    params = sum(p.numel() for p in pred.model.parameters())
    print(f"machine: {machine_description(a.device)}")
    print(f"MD-Dose checkpoint: {a.model} ({params / 1e6:.2f} M parameters); seed {a.seed}, one sample, no flips")
    print(f"\nAll settings on {len(paths)} validation patients ({', '.join(r.id for r in refs)}); "
          f"DDPM 1000 on the first {n_ddpm} only")
    head = f"{'setting':<32}{'patients':>9}{'dose score':>12}{'DVH score':>11}{'|HI err|':>10}{'s/patient':>11}"
    print(head)
    for label, rows in results.items():
        d, v, h, s = summarise(rows)
        print(f"{label:<32}{len(rows):>9}{d:>12.3f}{v:>11.3f}{h:>10.3f}{s:>11.2f}")
    if n_ddpm:
        base_d, _, _, base_s = summarise(results["DDPM 1000"])
        print(f"\nOn the DDPM subset ({n_ddpm} patients): ratios to DDPM 1000")
        print(head + f"{'dose/DDPM':>11}{'speed-up':>10}")
        for label, rows in results.items():
            d, v, h, s = summarise(rows[:n_ddpm])
            print(f"{label:<32}{n_ddpm:>9}{d:>12.3f}{v:>11.3f}{h:>10.3f}{s:>11.2f}{d / base_d:>11.3f}{base_s / s:>9.0f}x")


if __name__ == "__main__":
    main()
