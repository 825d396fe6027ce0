"""What DVH estimate bands add to a prediction: python benchmarks/bench_dvh_bands.py SPLIT [--model M] [--limit N].

    python benchmarks/bench_dvh_bands.py data/openkbp/validation-pats --limit 10
    python benchmarks/bench_dvh_bands.py --smoke

Per patient, as `rtgen predict` does it: read the patient, predict the dose with the ensemble's
spread (features, every booster, the DVH calibration), then the DVH estimate (every banded metric of
the predicted dose, and its bands). Prints the mean seconds of each stage and the bands' share.
Target: the bands add at most 2 s per patient on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import common
import numpy as np

from rtgen.data.sources import find_patients, load_patient
from rtgen.hub import default_model, shipped_model_dir
from rtgen.inference import load_predictor


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("split", type=Path, nargs="?", help="a split folder of patients, e.g. data/openkbp/validation-pats")
    ap.add_argument("--model", default=None, help="a dose model with bands (default: the shipped default)")
    ap.add_argument("--limit", type=int, default=None, help="the first N patients")
    ap.add_argument("--smoke", action="store_true", help="seconds: one patient bundled with rtgen")
    args = ap.parse_args(argv)
    if args.smoke:
        args.split, args.limit = common.bundled_openkbp(), 1
    if args.split is None:
        ap.error("SPLIT is required (or --smoke)")
    model = args.model or shipped_model_dir(default_model("dose"))
    predictor = load_predictor(model, "cpu")
    task = predictor.task
    if getattr(task, "dvh_bands", None) is None:
        raise SystemExit(f"{model}: this model has no DVH bands")
    paths = find_patients(args.split)[: args.limit]
    times: dict[str, list[float]] = {"read": [], "dose and spread": [], "DVH estimate": []}
    rows = 0
    for path in paths:
        t0 = time.perf_counter()
        patient = load_patient(path)
        t1 = time.perf_counter()
        dose, _ = predictor.predict_with_uncertainty(patient)
        t2 = time.perf_counter()
        rows += len(task.dvh_estimate(patient, dose))
        t3 = time.perf_counter()
        for key, sec in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
            times[key].append(sec)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"model: {model}; patients: {len(paths)} from {args.split}; {rows / len(paths):.0f} banded metrics per patient")
    print(f"{'stage':<20}{'mean s/patient':>16}{'max s':>8}")
    for key, values in times.items():
        print(f"{key:<20}{np.mean(values):>16.3f}{np.max(values):>8.3f}")
    total = sum(np.mean(v) for v in times.values())
    print(f"bands' share of the prediction: {np.mean(times['DVH estimate']) / total * 100:.1f} %")


if __name__ == "__main__":
    main()
