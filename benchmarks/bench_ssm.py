"""State-space layers: selective scans, Mamba and Mamba2 blocks against the sequential reference,
mambapy, transformers' Mamba2 and attention; forward and forward+backward time and peak memory,
then the targets as ratios measured in the same run. The same as `rtgen bench ssm`.

    python benchmarks/bench_ssm.py [--device cuda] [--lengths 1024 4096 16384 65536] [--widths 64 128]
    python benchmarks/bench_ssm.py --smoke
"""

from __future__ import annotations

import argparse

if __name__ == "__main__":
    from rtgen.core.runtime import configure_cpu_runtime

    configure_cpu_runtime()  # as the `rtgen` command does, before PyTorch loads

from rtgen.bench.ssm import (  # noqa: E402
    format_table,
    format_targets,
    machine_description,
    run_benchmark,
    save_json,
    targets,
)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--budget", type=float, default=60.0, help="skip a measurement estimated to take longer (s)")
    ap.add_argument("--only", nargs="*", help="substrings of implementation names to run")
    ap.add_argument("--json", help="also write the rows as JSON here")
    ap.add_argument("--smoke", action="store_true", help="seconds: one short length, one narrow width, two of rtgen's rows")
    a = ap.parse_args(argv)
    if a.smoke:
        a.lengths, a.widths, a.only, a.budget = [256], [32], ["rtgen fused", "Mamba2 block, rtgen"], 5.0
    rows = run_benchmark(a.lengths, a.widths, a.device, a.budget, repeats=1 if a.smoke else 3, only=a.only,
                         progress=lambda m: print("..", m, flush=True), peak_seconds=0.0 if a.smoke else 0.5)
    print(f"\nmachine: {machine_description(a.device)}\n")
    print(format_table(rows))
    print()
    print(format_targets(targets(rows)))
    if a.json:
        save_json(a.json, rows, a.device)


if __name__ == "__main__":
    main()
