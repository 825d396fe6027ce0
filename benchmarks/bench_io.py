"""Patient read time: python benchmarks/bench_io.py SPLIT [--n 10]  (smoke: --smoke).

Reads N patients from the OpenKBP CSV layout, from gzipped CSVs, and from the .npz cache
(`rtgen convert openkbp`), and prints the mean and worst seconds per patient.
Target: one CSV patient in under 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import common

from rtgen.data import find_patients, read_patient, write_patient
from rtgen.data.sources.npz import read_npz, write_npz


def timed(fn, items):
    times = []
    for it in items:
        t = time.perf_counter()
        fn(it)
        times.append(time.perf_counter() - t)
    return sum(times) / len(times), max(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("split", type=Path, nargs="?", help="OpenKBP split folder, e.g. data/openkbp/train-pats")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--smoke", action="store_true", help="seconds: the patients bundled with rtgen")
    args = ap.parse_args(argv)
    if args.smoke:
        args.split = args.split or common.bundled_openkbp()
    if args.split is None:
        ap.error("SPLIT is required (or --smoke)")
    paths = find_patients(args.split)[: args.n]
    work = common.smoke_dir("io") if args.smoke else Path(tempfile.mkdtemp(prefix="rtgen-bench-io-"))
    gz, npz = [], []
    for p in paths:
        patient = read_patient(p)
        gz.append(write_patient(patient, work / "gz" / patient.id, compress=True))
        npz.append(write_npz(patient, work / "npz" / f"{patient.id}.npz"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; {len(paths)} patients")
    print(f"{'format':<28}{'mean s/patient':>16}{'max s':>10}")
    for label, fn, items in [
        ("OpenKBP CSV", read_patient, paths),
        ("OpenKBP CSV (.csv.gz)", read_patient, gz),
        ("rtgen .npz cache", read_npz, npz),
        ("CSV, dose + masks only", lambda p: read_patient(p, load_ct=False), paths),
    ]:
        mean, worst = timed(fn, items)
        print(f"{label:<28}{mean:>16.3f}{worst:>10.3f}")


if __name__ == "__main__":
    main()
