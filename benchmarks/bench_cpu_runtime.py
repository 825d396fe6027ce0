"""What rtgen's CPU process settings (rtgen.core.runtime) change, measured side by side.

    python benchmarks/bench_cpu_runtime.py [--rounds 3] [--lengths 16384 65536]

Each measurement runs in a fresh interpreter (the settings act once, before PyTorch loads), with
RTGEN_CPU_RUNTIME=0 (glibc and libgomp defaults) or as the `rtgen` command starts (GOMP_SPINCOUNT
10000, freed memory kept); the two alternate, round after round, so a slow minute hits both. Each
child times a Mamba block (width 64, batch 1) and the fused selective scan alone, forward+backward,
median of 7 after 2 warm-ups, and counts the minor page faults of one step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, resource, statistics, sys, time
from rtgen.core.runtime import configure_cpu_runtime, describe_cpu_runtime
configure_cpu_runtime()
import torch
from rtgen.bench.ssm import _scan_workload
from rtgen.ssm import Mamba, fused
out = {"runtime": describe_cpu_runtime()}
for L in json.loads(sys.argv[1]):
    torch.manual_seed(0)
    block, x = Mamba(64, d_state=16), torch.randn(1, L, 64, requires_grad=True)
    run, tensors = _scan_workload(fused.selective_scan_fused, 64, L, torch.device("cpu"))
    leaves = [t.requires_grad_() for t in tensors if t.is_floating_point()]
    steps = {"Mamba block": lambda: block(x).sum().backward(), "fused scan": lambda: run().sum().backward()}
    for name, step in steps.items():
        for _ in range(2):
            step()
        times = []
        for _ in range(7):
            t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        out[f"{name} {L}"] = (statistics.median(times) * 1000, faults)
print(json.dumps(out))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lengths", type=int, nargs="+", default=[16384, 65536])
    a = ap.parse_args()
    settings = {"defaults (RTGEN_CPU_RUNTIME=0)": "0", "rtgen's settings": "1"}
    results = {k: [] for k in settings}
    for _ in range(a.rounds):
        for label, flag in settings.items():
            env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
            env["RTGEN_CPU_RUNTIME"] = flag
            done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(a.lengths)], env=env, check=True,
                                  capture_output=True, text=True)
            results[label].append(json.loads(done.stdout.splitlines()[-1]))
    from rtgen.bench.ssm import machine_description

    print(f"machine: {machine_description('cpu').split(';')[0]}")
    print(f"forward+backward ms, median over {a.rounds} rounds of each child's median of 7; minor page faults per step")
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
