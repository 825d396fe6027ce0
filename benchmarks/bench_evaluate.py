"""Time `rtgen evaluate` on a split: python benchmarks/bench_evaluate.py REF_SPLIT [--workdir DIR].

Predictions are the reference doses blurred (Gaussian, sigma 1.5 voxels) and written in the
submission format, so the run reads, scores and plots exactly what a real evaluation would.
Prints a table of wall times. Target: 33 validation patients in under 30 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from scipy import ndimage

from rtgen.data import PatientSplit, write_dose_csv
from rtgen.evaluation import evaluate_folders


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ref", type=Path)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rtgen-bench-eval-"))
    pred_dir = work / "pred"
    split = PatientSplit(args.ref, load_ct=False, progress=False)
    if not pred_dir.exists():
        for p in split:
            pred = ndimage.gaussian_filter(p.dose, 1.5) * p.possible_dose_mask
            write_dose_csv(pred_dir / f"{p.id}.csv", pred)
    rows = []
    for label, kw in [("scores only", dict(out_dir=None)), ("scores + outputs + DVH figures", dict(out_dir=work / "eval"))]:
        t = time.perf_counter()
        res = evaluate_folders(pred_dir, args.ref, progress=False, **kw)
        rows.append((label, time.perf_counter() - t, res.scores.dose_score, res.scores.dvh_score))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"patients: {len(split)} from {args.ref}")
    print(f"{'what':<34}{'seconds':>10}{'dose score':>12}{'DVH score':>12}")
    for label, sec, ds, dvh in rows:
        print(f"{label:<34}{sec:>10.2f}{ds:>12.4f}{dvh:>12.4f}")


if __name__ == "__main__":
    main()
