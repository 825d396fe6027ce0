"""Time `rtgen evaluate` on a split: python benchmarks/bench_evaluate.py REF_SPLIT [--workdir DIR].

    python benchmarks/bench_evaluate.py data/openkbp/validation-pats
    python benchmarks/bench_evaluate.py --smoke

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

import common

from rtgen.data import PatientSplit
from rtgen.evaluation import evaluate_folders


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ref", type=Path, nargs="?", help="OpenKBP split with doses, e.g. data/openkbp/validation-pats")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--smoke", action="store_true", help="seconds: one patient bundled with rtgen")
    args = ap.parse_args(argv)
    if args.smoke:  # one bundled patient
        args.workdir = args.workdir or common.smoke_dir("evaluate")
        if args.ref is None:
            args.ref = args.workdir / "ref"
            args.ref.mkdir(parents=True)
            (args.ref / "pt_204").symlink_to(common.bundled_openkbp() / "pt_204", target_is_directory=True)
    if args.ref is None:
        ap.error("REF_SPLIT is required (or --smoke)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rtgen-bench-eval-"))
    pred_dir = work / "pred"
    split = PatientSplit(args.ref, load_ct=False, progress=False)
    if not pred_dir.exists():
        common.blurred_doses(args.ref, pred_dir, sigma=1.5)
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
