"""State-space layer benchmark: python benchmarks/bench_ssm.py [--device cuda] [--lengths ...] [--widths ...]

Same as `rtgen bench ssm`. Prints a table of forward and forward+backward time and peak memory,
then the targets as ratios measured in the same run.
"""

import argparse

from rtgen.core.runtime import configure_cpu_runtime

configure_cpu_runtime()  # as the `rtgen` command does, before PyTorch loads

from rtgen.bench.ssm import format_table, format_targets, machine_description, run_benchmark, save_json, targets

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--budget", type=float, default=60.0, help="skip a measurement estimated to take longer (s)")
    ap.add_argument("--only", nargs="*", help="substrings of implementation names to run")
    ap.add_argument("--json", help="also write the rows as JSON here")
    a = ap.parse_args()
    rows = run_benchmark(a.lengths, a.widths, a.device, a.budget, only=a.only, progress=lambda m: print("..", m, flush=True))
    print(f"\nmachine: {machine_description(a.device)}\n")
    print(format_table(rows))
    print()
    print(format_targets(targets(rows)))
    if a.json:
        save_json(a.json, rows, a.device)
