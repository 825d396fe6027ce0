"""CPU training step of the CPU-size DiffMa network on the fused numba kernels (scan, causal conv, dt
projection: the CPU default) against the pure-PyTorch path, side by side in one run.

    python benchmarks/bench_diffma_step.py [--batch 32] [--steps 4]
    python benchmarks/bench_diffma_step.py --smoke

configs/diffma_cpu.yaml's network (patch 2, width 128, depth 4, d_state 16) on random 32 x 16 x 16
latents, MSE loss, AdamW step. The backends alternate, round after round (`--rounds`, default 2), so
a disturbance hits both; each reports the best of its timed steps per round, after one warm-up step (`--warmup`).
"""

from __future__ import annotations

import argparse
import time

if __name__ == "__main__":
    from rtgen.core.runtime import configure_cpu_runtime

    configure_cpu_runtime()  # as `rtgen train` does, before PyTorch loads

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from rtgen.bench.ssm import machine_description  # noqa: E402
from rtgen.models import build_model  # noqa: E402
from rtgen.ssm import dispatch  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="times each backend gets its turn")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before each backend's timed ones")
    ap.add_argument("--smoke", action="store_true", help="seconds: batch 1, one round of one timed step, no warm-up")
    a = ap.parse_args(argv)
    if a.smoke:
        a.batch, a.steps, a.rounds, a.warmup = 1, 1, 1, 0
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
    for backend in ("torch", "auto") * a.rounds:
        with dispatch.use_backend(backend):
            for _ in range(a.warmup):
                step()
            times = []
            for _ in range(a.steps):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
        res.setdefault(backend, []).append(min(times) * 1000)
    print(f"machine: {machine_description('cpu')}")
    print(f"DiffMa (configs/diffma_cpu.yaml network) training step, batch {B}, best of {a.steps} per round, "
          f"{a.rounds} rounds")
    names = {"torch": "pure-PyTorch path", "auto": "fused numba kernels (default)"}
    for k, v in res.items():
        print(f"  {names[k]:<32}" + "  ".join(f"{s:7.0f} ms" for s in v))
    print(f"  speed-up of the fused kernels: {min(res['torch']) / min(res['auto']):.2f}x (best against best)")


if __name__ == "__main__":
    main()
