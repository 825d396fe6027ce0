"""MD-Dose network size and time per denoising step, against Table 2 of the MD-Dose paper
(Fu et al., arXiv:2403.08479).

    python benchmarks/bench_md_dose.py [--device cpu|cuda] [--batch 1 4] [--size 128]
    python benchmarks/bench_md_dose.py --smoke

One "step" is one forward pass of the noise predictor (with its structure encoder) on a batch of
128 x 128 slices, which is what every sampler step costs. Paper (Table 2): 30.47 M parameters,
0.18 s per step on an RTX 3090 at 256 x 256. The last row is the small configuration the shipped
CPU-trained checkpoint uses.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from rtgen.bench.ssm import machine_description
from rtgen.hub import shipped_model_dir
from rtgen.models import count_parameters
from rtgen.models.md_dose import MDDoseConfig, MDDoseNet

ENCODERS = ("mamba", "conv", "transformer", "none")


def shipped_architecture() -> dict:
    """The architecture recorded in the shipped checkpoint's config.json (configs/md_dose_cpu.yaml)."""
    return json.loads((shipped_model_dir("md_dose") / "config.json").read_text())["model"]["architecture"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=ENCODERS,
                    help="structure encoders of the paper-size rows")
    ap.add_argument("--smoke", action="store_true", help="seconds: 64 x 64 slices, batch 1, one encoder, no warm-up")
    a = ap.parse_args(argv)
    if a.smoke:
        a.batch, a.size, a.repeats, a.encoders = [1], 64, 1, ["mamba"]
    dev = torch.device(a.device)
    print(f"machine: {machine_description(a.device)}")
    print(f"{'configuration':<48}{'params':>10}{'batch':>7}{'s / step':>10}")
    settings = [(f"paper size, {enc} encoder", dict(structure_encoder=enc))
                for enc in a.encoders]
    settings.append(("shipped CPU config (configs/md_dose_cpu.yaml)", shipped_architecture()))
    for label, kw in settings:
        net = MDDoseNet(MDDoseConfig(**{"cond_channels": 20, **kw})).to(dev).eval()
        for b in a.batch:
            x = torch.randn(b, 1, a.size, a.size, device=dev)
            c = torch.randn(b, 20, a.size, a.size, device=dev)
            t = torch.full((b,), 500, device=dev)
            with torch.no_grad():
                if not a.smoke:
                    net(x, t, c)  # warm-up
                best = float("inf")
                for _ in range(a.repeats):
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    net(x, t, c)
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    best = min(best, time.perf_counter() - t0)
            print(f"{label:<48}{count_parameters(net) / 1e6:>9.2f}M{b:>7}{best:>10.3f}")


if __name__ == "__main__":
    main()
