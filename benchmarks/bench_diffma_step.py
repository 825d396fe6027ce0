"""CPU training step of the CPU-size DiffMa network on the fused numba kernels (scan, causal conv, dt
projection: the CPU default) against the pure-PyTorch path, side by side in one run.

    python benchmarks/bench_diffma_step.py [--batch 32] [--steps 4]

configs/diffma_cpu.yaml's network (patch 2, width 128, depth 4, d_state 16) on random 32 x 16 x 16
latents, MSE loss, AdamW step. The backends alternate twice (so a disturbance hits both); each
reports the best of its timed steps per round, after one warm-up step.
"""

from __future__ import annotations

import argparse
import time

from rtgen.core.runtime import configure_cpu_runtime

configure_cpu_runtime()  # as `rtgen train` does, before PyTorch loads

import torch
import torch.nn.functional as F

from rtgen.bench.ssm import machine_description
from rtgen.models import build_model
from rtgen.ssm import dispatch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4)
    a = ap.parse_args()
    torch.manual_seed(0)
    model = build_model("diffma", patch_size=2, hidden_size=128, depth=4, d_state=16).train()
    B = a.batch
    x, ct, t = torch.randn(B, 32, 16, 16), torch.randn(B, 32, 16, 16), torch.randint(0, 1000, (B,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(x, t, ct), x).backward()
        opt.step()

    res: dict[str, list[float]] = {}
    for backend in ("torch", "auto", "torch", "auto"):
        with dispatch.use_backend(backend):
            step()
            times = []
            for _ in range(a.steps):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
        res.setdefault(backend, []).append(min(times) * 1000)
    print(f"machine: {machine_description('cpu')}")
    print(f"DiffMa (configs/diffma_cpu.yaml network) training step, batch {B}, best of {a.steps} per round, 2 rounds")
    names = {"torch": "pure-PyTorch path", "auto": "fused numba kernels (default)"}
    for k, v in res.items():
        print(f"  {names[k]:<32}" + "  ".join(f"{s:7.0f} ms" for s in v))
    print(f"  speed-up of the fused kernels: {min(res['torch']) / min(res['auto']):.2f}x (best against best)")


if __name__ == "__main__":
    main()
