"""What each fused CPU kernel buys a Mamba block, side by side in one run.

    python benchmarks/bench_mamba_block.py [--width 64] [--lengths 16384 65536] [--rounds 5] [--mambapy]
    python benchmarks/bench_mamba_block.py --smoke

Forward+backward of one `Mamba` block (batch 1, d_state 16), four variants of the same weights, steps
alternating round after round (so a slow minute hits all of them), median per variant:
- all fused: the CPU default (fused scan with the dt projection folded in, fused causal conv);
- dt projection unfolded: the projection as `F.linear` before the fused scan, as before the fold;
- conv on PyTorch: the causal conv as the channels-last conv2d the block used before its kernel;
- pure PyTorch: the `torch` backend, no numba kernel at all;
- mambapy (with `--mambapy`, if installed): mambapy's `MambaBlock` of the same sizes (its own weights),
  the usual reference for a pure-PyTorch Mamba: alternating with the rest gives the speed-up over
  it from one run, not from rows measured minutes apart.
The variants swap the block's dispatch functions for the ones the other backends use.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

if __name__ == "__main__":
    from rtgen.core.runtime import configure_cpu_runtime

    configure_cpu_runtime()  # as the `rtgen` command does, before PyTorch loads

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from rtgen.bench.ssm import machine_description, mambapy_block  # noqa: E402
from rtgen.ssm import Mamba, dispatch  # noqa: E402


def _unfolded(u, dt_low, dt_weight, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    delta = F.linear(dt_low.transpose(1, 2), dt_weight).transpose(1, 2)
    return dispatch.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


@contextlib.contextmanager
def variant(name: str):
    saved = dispatch.selective_scan_projected_dt, dispatch.fused_causal_conv
    try:
        if name == "dt projection unfolded":
            dispatch.selective_scan_projected_dt = _unfolded
        elif name == "conv on PyTorch":
            dispatch.fused_causal_conv = lambda x, weight: False
        with dispatch.use_backend("torch" if name == "pure PyTorch" else "auto"):
            yield
    finally:
        dispatch.selective_scan_projected_dt, dispatch.fused_causal_conv = saved


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--lengths", type=int, nargs="+", default=[16384, 65536])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mambapy", action="store_true", help="also mambapy's MambaBlock, alternating with the rest")
    ap.add_argument("--smoke", action="store_true", help="seconds: width 16, 256 tokens, one round")
    a = ap.parse_args(argv)
    if a.smoke:
        a.width, a.lengths, a.rounds = 16, [256], 1
    names = ["all fused", "dt projection unfolded", "conv on PyTorch", "pure PyTorch"] + (["mambapy"] if a.mambapy else [])
    print(f"machine: {machine_description('cpu')}")
    print(f"Mamba block, width {a.width}, batch 1, forward+backward, median of {a.rounds} alternating rounds")
    for L in a.lengths:
        torch.manual_seed(0)
        block = Mamba(a.width, d_state=16)
        other = mambapy_block(a.width) if a.mambapy else None
        x = torch.randn(1, L, a.width, requires_grad=True)
        times = {n: [] for n in names}

        def run(n):
            with variant("pure PyTorch" if n == "mambapy" else n):  # mambapy: no rtgen kernel involved
                t0 = time.perf_counter()
                (other if n == "mambapy" else block)(x).sum().backward()
                return time.perf_counter() - t0

        for n in names:  # warm-up (and the numba compile) outside the timed rounds
            run(n)
        for _ in range(a.rounds):
            for n in names:
                times[n].append(run(n))
        base = statistics.median(times["all fused"])
        for n in names:
            ms = statistics.median(times[n])
            print(f"  L {L:6d}  {n:<24}{ms * 1000:9.1f} ms   {ms / base:5.2f}x the default"
                  f"   (range {min(times[n]) * 1000:.1f}-{max(times[n]) * 1000:.1f})")


if __name__ == "__main__":
    main()
