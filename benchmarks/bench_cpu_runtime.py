"""What rtgen's CPU process settings (rtgen.core.runtime) change, measured side by side.

    python benchmarks/bench_cpu_runtime.py [--rounds 3] [--lengths 16384 65536]
    python benchmarks/bench_cpu_runtime.py --smoke

Each measurement runs in a fresh interpreter (the settings act once, before PyTorch loads), with
RTGEN_CPU_RUNTIME=0 (glibc and libgomp defaults) or as the `rtgen` command starts (GOMP_SPINCOUNT
10000, freed memory kept); the two alternate, round after round, so a slow minute hits both. Each
child times a Mamba block (width 64, batch 1) and the fused selective scan alone, forward+backward,
median of 7 (`--repeats`) after 2 warm-ups, and counts the minor page faults of one step.
`--smoke` runs the measurement code once in this process instead (it checks the script, not the
settings: both rows then share one process).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys


def measure(lengths: list[int], repeats: int) -> dict:
    """Median forward+backward ms and the minor page faults of one step, per workload and length."""
    import resource
    import time

    import torch

    from rtgen.bench.ssm import scan_workload
    from rtgen.core.runtime import describe_cpu_runtime
    from rtgen.ssm import Mamba, fused

    out = {"runtime": describe_cpu_runtime()}
    for L in lengths:
        torch.manual_seed(0)
        block, x = Mamba(64, d_state=16), torch.randn(1, L, 64, requires_grad=True)
        run, tensors = scan_workload(fused.selective_scan_fused, 64, L, torch.device("cpu"))
        for t in tensors:
            if t.is_floating_point():
                t.requires_grad_()
        steps = {"Mamba block": lambda: block(x).sum().backward(), "fused scan": lambda: run().sum().backward()}
        for name, step in steps.items():
            for _ in range(2):
                step()
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            step()
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
            out[f"{name} {L}"] = (statistics.median(times) * 1000, faults)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lengths", type=int, nargs="+", default=[16384, 65536])
    ap.add_argument("--repeats", type=int, default=7, help="timed steps per child (their median)")
    ap.add_argument("--smoke", action="store_true", help="seconds: one round, 256 tokens, in this process")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one measurement, JSON on stdout
    a = ap.parse_args(argv)
    if a.child:
        from rtgen.core.runtime import configure_cpu_runtime

        configure_cpu_runtime()  # before PyTorch loads (measure imports it)
        print(json.dumps(measure(a.lengths, a.repeats)))
        return
    if a.smoke:
        a.rounds, a.lengths, a.repeats = 1, [256], 1
    settings = {"defaults (RTGEN_CPU_RUNTIME=0)": "0", "rtgen's settings": "1"}
    results = {k: [] for k in settings}
    for _ in range(a.rounds):
        for label, flag in settings.items():
            if a.smoke:
                results[label].append(measure(a.lengths, a.repeats))
                continue
            env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
            env["RTGEN_CPU_RUNTIME"] = flag
            cmd = [sys.executable, __file__, "--child", "--repeats", str(a.repeats), "--lengths", *map(str, a.lengths)]
            done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
            results[label].append(json.loads(done.stdout.splitlines()[-1]))
    from rtgen.bench.ssm import machine_description

    print(f"machine: {machine_description('cpu').split(';')[0]}")
    print(f"forward+backward ms, median over {a.rounds} rounds of each child's median of {a.repeats}; "
          "minor page faults per step")
    keys = [k for k in results[next(iter(settings))][0] if k != "runtime"]
    for label in settings:
        print(f"\n{label}: {results[label][0]['runtime']}")
        for k in keys:
            ms = statistics.median(r[k][0] for r in results[label])
            faults = statistics.median(r[k][1] for r in results[label])
            print(f"  {k:<24}{ms:>9.1f} ms   {faults:>9.0f} faults")
    base, tuned = (results[label] for label in settings)
    print("\nspeed-up of rtgen's settings (same rounds):")
    for k in keys:
        b, t = statistics.median(r[k][0] for r in base), statistics.median(r[k][0] for r in tuned)
        print(f"  {k:<24}{b / t:>6.2f}x")


if __name__ == "__main__":
    main()
