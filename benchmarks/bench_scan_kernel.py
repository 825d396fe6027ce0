"""The fused selective scan's numba kernels alone: forward and backward kernel time, and the whole
forward+backward step, for one work unit per thread.

    python benchmarks/bench_scan_kernel.py [--channels 64] [--length 16384] [--threads 1] [--steps 25]
    python benchmarks/bench_scan_kernel.py --smoke

The scan as a Mamba block hands it over (u, delta, z, B, C as transposed views of time-major
tensors, d_state 16, softplus, a dense upstream gradient); the kernel times come from timing
`rtgen.ssm.fused.scan_fwd` and `scan_bwd` around their calls, medians over the steps after a
warm-up. With one thread and 64 channels there is one work unit, so the figures are the kernels'
own cost without the machine's second core.

To compare with another revision, run this same script against that revision's package:
    git worktree add ../rtgen-old REV && PYTHONPATH=../rtgen-old python benchmarks/bench_scan_kernel.py
(the kernels' cache is per checkout). To see the AVX2 code a machine without AVX-512 gets, set
NUMBA_CPU_NAME=haswell and a NUMBA_CACHE_DIR of its own.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--length", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--smoke", action="store_true", help="seconds: 512 steps of the scan, one timed step")
    a = ap.parse_args(argv)
    if a.smoke:
        a.length, a.steps = 512, 1
    if __name__ == "__main__":  # a process of its own: set before numba and PyTorch load
        os.environ["NUMBA_NUM_THREADS"] = str(a.threads)
        from rtgen.core.runtime import configure_cpu_runtime

        configure_cpu_runtime()
    import statistics
    import time

    import numba
    import torch

    import rtgen
    from rtgen.ssm import fused

    kernel_times = {"forward": [], "backward": []}

    def timed(name, fn):
        def run(*args):
            t0 = time.perf_counter()
            fn(*args)
            kernel_times[name].append(time.perf_counter() - t0)
        return run

    saved = fused.scan_fwd, fused.scan_bwd, numba.get_num_threads()
    try:
        numba.set_num_threads(min(a.threads, numba.config.NUMBA_NUM_THREADS))
        fused.scan_fwd, fused.scan_bwd = timed("forward", fused.scan_fwd), timed("backward", fused.scan_bwd)
        g = torch.Generator().manual_seed(0)
        L, d, n = a.length, a.channels, 16
        tm = lambda c: torch.randn(1, L, c, generator=g).transpose(1, 2)  # noqa: E731
        t = dict(u=tm(d), delta=tm(d), A=-torch.rand(d, n, generator=g) - 0.5, B=tm(n), C=tm(n), D=torch.ones(d),
                 z=tm(d), delta_bias=torch.zeros(d))
        for v in t.values():
            v.requires_grad_(True)
        gy = tm(d)

        def step():
            for v in t.values():
                v.grad = None
            t0 = time.perf_counter()
            fused.selective_scan_fused(**t, delta_softplus=True).backward(gy)
            return time.perf_counter() - t0

        step()  # warm-up (and the numba compile)
        for v in kernel_times.values():
            v.clear()
        total = [step() for _ in range(a.steps)]
        threads = numba.get_num_threads()
    finally:
        fused.scan_fwd, fused.scan_bwd = saved[:2]
        numba.set_num_threads(saved[2])
    ms = lambda x: statistics.median(x) * 1000  # noqa: E731
    print(f"rtgen from {os.path.dirname(rtgen.__file__)}; numba threads {threads}; "
          f"NUMBA_CPU_NAME={os.environ.get('NUMBA_CPU_NAME', 'host')}; python {sys.version.split()[0]}")
    print(f"fused scan, {d} channels, d_state {n}, L {L}, median of {a.steps} steps: forward+backward "
          f"{ms(total):.2f} ms, forward kernel {ms(kernel_times['forward']):.2f} ms, "
          f"backward kernel {ms(kernel_times['backward']):.2f} ms")


if __name__ == "__main__":
    main()
