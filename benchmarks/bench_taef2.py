"""TAEF2 encode and decode of 64 grey 128 px slices on the CPU, in PyTorch's default (contiguous)
memory order, in channels-last (what `rtgen.models.frozen_autoencoders.FrozenTAEF2` uses), and in channels-last
under bfloat16 autocast (`latent.cpu_bf16`, on CPUs with native bf16), side by side.

    python benchmarks/bench_taef2.py [--threads 2] [--repeats 3] [--unet RUN]
    python benchmarks/bench_taef2.py --smoke

With `--unet RUN` (an image_regression run or a shipped model, e.g. hub:unet_sts) its forward pass
is timed the same way: a DiffMa refiner runs its base model on every slice (4 times with
`base.flip_average`), in channels-last.

Why: the autoencoder, not the diffusion network, dominates DiffMa's prediction time on a CPU (two
encodes and two decodes per slice for a refiner), so its layout decides the seconds per patient.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import common
import torch

from rtgen.models.taef2 import load_taef2


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--size", type=int, default=128, help="slice width and height (px)")
    ap.add_argument("--unet", default=None, help="an image_regression run whose forward pass is timed too")
    ap.add_argument("--smoke", action="store_true", help="seconds: 2 slices of 64 px, one repeat, with hub:unet_sts")
    a = ap.parse_args(argv)
    if a.smoke:
        a.slices, a.size, a.repeats, a.unet = 2, 64, 1, a.unet or "hub:unet_sts"
    with common.torch_threads(a.threads):
        run(a)


def run(a: argparse.Namespace) -> None:
    model = load_taef2().eval()
    x = torch.rand(a.slices, 3, a.size, a.size)
    print(f"{platform.processor() or platform.machine()}, {a.threads} threads, {a.slices} slices of {a.size} px, "
          f"median of {a.repeats}")
    rows = {}
    from rtgen.models.frozen_autoencoders import native_cpu_bf16

    with torch.no_grad():
        z = model.encode(x)
        settings = [(torch.contiguous_format, False), (torch.channels_last, False)]
        settings += [(torch.channels_last, True)] if native_cpu_bf16() else []
        for layout, bf16 in settings:
            model = model.to(memory_format=layout)
            xi, zi = x.contiguous(memory_format=layout), z.contiguous(memory_format=layout)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                enc = [timed(lambda: model.encode(xi)) for _ in range(a.repeats + 1)][1:]  # the first warms up
                dec = [timed(lambda: model.decode(zi)) for _ in range(a.repeats + 1)][1:]
            rows[str(layout) + (" + bf16" if bf16 else "")] = (statistics.median(enc), statistics.median(dec))
    base = rows[str(torch.contiguous_format)]
    for name, (enc, dec) in rows.items():
        print(f"{name:31s} encode {enc:6.2f} s ({base[0] / enc:.2f}x)  decode {dec:6.2f} s ({base[1] / dec:.2f}x)")
    if a.unet:
        from rtgen.inference import load_predictor, resolve_model

        unet = load_predictor(resolve_model(a.unet), "cpu").model.eval()
        channels = next(p for p in unet.parameters() if p.dim() == 4).shape[1]  # its first convolution's inputs
        grey = x[:, :1].repeat(1, channels, 1, 1).contiguous()
        times = {}
        with torch.no_grad():
            for layout in (torch.contiguous_format, torch.channels_last):
                unet = unet.to(memory_format=layout)
                times[str(layout)] = statistics.median([timed(lambda: unet(grey)) for _ in range(a.repeats + 1)][1:])
        for name, t in times.items():
            print(f"UNet {name:19s} forward {t:6.2f} s ({times[str(torch.contiguous_format)] / t:.2f}x)")


if __name__ == "__main__":
    main()
