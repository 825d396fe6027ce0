"""MambaUNetV2 CPU training step: eager fp32 vs bf16 autocast + channels_last, side by side in one run.

    python benchmarks/bench_train_step.py [--batch 8] [--steps 5] [--threads N]
    python benchmarks/bench_train_step.py --smoke

The CPU configuration (configs/mamba_unet_v2_cpu.yaml's network): batch 8, 20 x 128 x 128 inputs, channels (16, 32, 64, 128),
mixer "mamba2" from level 2; loss smooth L1 against a random target; SGD step included. Each
variant gets its own model with the same initial weights, warm-up steps outside the timed region,
and alternating timed steps (so a disturbance hits both); the median step time is reported.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

if __name__ == "__main__":
    from rtgen.core.runtime import configure_cpu_runtime

    configure_cpu_runtime()  # as `rtgen train` does, before PyTorch loads

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from rtgen.bench.ssm import machine_description  # noqa: E402
from rtgen.core.devices import to_channels_last  # noqa: E402
from rtgen.models.unet2d import DoseUNet2D, UNet2DConfig  # noqa: E402


def make_step(model, x, y, bf16: bool, channels_last: bool):
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    if channels_last:  # what train.channels_last does
        to_channels_last(model)
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = F.smooth_l1_loss(out.float(), y)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--smoke", action="store_true", help="seconds: batch 1 of 32 x 32 slices, one step")
    a = ap.parse_args(argv)
    if a.smoke:
        a.batch, a.size, a.steps, a.warmup = 1, 32, 1, 1
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    base = DoseUNet2D(UNet2DConfig(in_channels=20, channels=(16, 32, 64, 128), mixer="mamba2", mixer_from_level=2))
    base.train()
    x = torch.randn(a.batch, 20, a.size, a.size)
    with torch.no_grad():
        shape = base(x[:1]).shape[1:]
    y = torch.randn(a.batch, *shape)
    variants = {
        "eager fp32": make_step(copy.deepcopy(base), x, y, bf16=False, channels_last=False),
        "bf16 autocast + channels_last": make_step(copy.deepcopy(base), x, y, bf16=True, channels_last=True),
    }
    for step in variants.values():
        for _ in range(a.warmup):
            step()
    times = {k: [] for k in variants}
    for _ in range(a.steps):
        for name, step in variants.items():  # alternate, so load changes hit both variants
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    print(f"machine: {machine_description('cpu')}")
    print(f"MambaUNetV2 CPU training step, batch {a.batch}, 20x{a.size}x{a.size}, channels (16,32,64,128), mamba2 from "
          f"level 2; median of {a.steps} steps after {a.warmup} warm-up")
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    for name, ms in med.items():
        spread = f"{min(times[name]) * 1000:.0f}-{max(times[name]) * 1000:.0f}"
        print(f"  {name:<32}{ms:>9.0f} ms/step   (range {spread} ms)")
    e, b = med["eager fp32"], med["bf16 autocast + channels_last"]
    print(f"  speed-up bf16 + channels_last over eager fp32: {e / b:.2f}x")


if __name__ == "__main__":
    main()
