"""Beam-geometry feature time per patient, against a budget of 5 s on one core.

    python benchmarks/bench_geometry.py [SPLIT] [--n 10] [--repeats 5]
    python benchmarks/bench_geometry.py --smoke

Without SPLIT it uses the two bundled OpenKBP patients. Reports the median of `repeats` runs of
`geometry_features` per patient (numba compilation is done once beforehand and not counted), the
time to read the same features back from the on-disk cache, and the Spearman correlation of
`beam_dose_proxy` with the real dose inside the possible-dose mask, where the patient has a dose.
Pin one core with `taskset -c 0` or OMP_NUM_THREADS=1 for the single-core number.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from scipy import stats

from rtgen.bench.ssm import machine_description
from rtgen.data import find_patients, read_patient
from rtgen.data.examples import example_patients_dir
from rtgen.data.transforms.beam_features import GeometryConfig, cached_geometry_features, geometry_features


def median_of(fn, repeats: int) -> float:
    """Median seconds of `fn` plus one read of every output voxel (untouched zero pages are free to
    allocate but not to use, and a consumer reads them all)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sum(float(v.sum()) for v in fn().values())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("split", type=Path, nargs="?", default=None)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="seconds: one bundled patient, one repeat")
    a = ap.parse_args(argv)
    if a.smoke:
        a.n, a.repeats = 1, 1
    paths = find_patients(a.split or example_patients_dir())[: a.n]
    config = GeometryConfig()
    cache = Path(tempfile.mkdtemp(prefix="rtgen-bench-geometry-"))
    print(f"machine: {machine_description('cpu')}")
    print(f"{len(config.angles_deg)} beams, {len(config.feature_names)} feature volumes")
    print(f"{'patient':<12}{'s compute':>12}{'s cached':>12}{'spearman r':>12}")
    total = []
    for i, path in enumerate(paths):
        patient = read_patient(path)
        if i == 0:
            geometry_features(patient, config)  # numba compile / cache load
        compute = median_of(lambda: geometry_features(patient, config), a.repeats)
        cached_geometry_features(patient, config, cache)
        cached = median_of(lambda: cached_geometry_features(patient, config, cache), a.repeats)
        r = float("nan")
        if patient.dose is not None:
            m = patient.possible_dose_mask
            r = stats.spearmanr(geometry_features(patient, config)["beam_dose_proxy"][m], patient.dose[m])[0]
        total.append(compute)
        print(f"{patient.id:<12}{compute:>12.2f}{cached:>12.2f}{r:>12.3f}")
    print(f"mean {sum(total) / len(total):.2f} s, worst {max(total):.2f} s per patient (budget 5 s)")


if __name__ == "__main__":
    main()
