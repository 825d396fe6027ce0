"""TAEF2 reconstruction of CT and MR slices: the ceiling a latent diffusion model on TAEF2 cannot pass.

    python benchmarks/taef2_reconstruction.py data/ct-mr-sts/validation [--sizes 128 224] [--spacing 1.25]
    python benchmarks/taef2_reconstruction.py --smoke

SPLIT holds one folder per patient with a CT and a T1 MR (`ct.nii.gz` and `mr_t1.nii.gz`, as in the
TCIA soft-tissue sarcoma data; `--ct-name`, `--mr-name` for others). Each volume is cut into slices
as rtgen.data.transforms.image_slices does for training (CT window, MR percentiles, in-plane
resampling, centred pad/crop), encoded and decoded by TAEF2, and scored per patient with
rtgen.imaging.image_scores on the [0, 1] -> 0-255 slices (no further percentile normalisation: the
input is already the model's intensity scale), over the whole slice and inside the body mask. A
latent diffusion model cannot beat these numbers: they bound what the autoencoder lets through.
Prints a markdown table with the machine; timings use one thread unless --threads says.
`--smoke` reconstructs 2 slices of each volume of the test pair in tests/data at 64 px.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import common
import numpy as np
import torch

from rtgen.core.atomic import atomic_write_text
from rtgen.data.sources.nifti import read_nifti
from rtgen.data.transforms.image_slices import (
    SliceSpec,
    body_mask_ct,
    body_mask_mr,
    mask_to_slices,
    to_rgb,
    volume_to_slices,
)
from rtgen.imaging import image_scores
from rtgen.models.taef2 import TAEF2, load_taef2

MODALITIES = {"ct": body_mask_ct, "mr": body_mask_mr}


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], check=False, capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


@torch.no_grad()
def reconstruct(model: TAEF2, slices: np.ndarray, batch: int) -> tuple[np.ndarray, float]:
    """(N, H, W) in [0, 1] -> its TAEF2 reconstruction (channel mean, clamped) and the seconds spent."""
    out, seconds = [], 0.0
    for i in range(0, len(slices), batch):
        x = torch.from_numpy(to_rgb(slices[i:i + batch]).copy())
        t = time.perf_counter()
        r = model.decode(model.encode(x))
        seconds += time.perf_counter() - t
        out.append(r.clamp(0, 1).mean(dim=1).numpy())
    return np.concatenate(out), seconds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("split", type=Path, nargs="?", help="folder of patient folders with a CT and an MR")
    ap.add_argument("--ct-name", default="ct.nii.gz")
    ap.add_argument("--mr-name", default="mr_t1.nii.gz")
    ap.add_argument("--max-slices", type=int, default=None, help="the central N slices of each volume")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128])
    ap.add_argument("--spacing", type=float, default=SliceSpec.spacing_mm, help="in-plane mm per pixel")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--weights", type=Path, default=None, help="TAEF2 folder (default: the copy shipped in rtgen)")
    ap.add_argument("--json", type=Path, default=None, help="also write per-patient scores here")
    ap.add_argument("--smoke", action="store_true", help="seconds: 2 slices of the test pair at 64 px")
    args = ap.parse_args(argv)
    if args.smoke:
        args.split, args.mr_name, args.sizes, args.max_slices = common.TEST_PAIRS, "mr.nii.gz", [64], 2
        args.json = common.smoke_dir("taef2") / "scores.json"
    if args.split is None:
        ap.error("SPLIT is required (or --smoke)")
    with common.torch_threads(args.threads):
        run(args)


def run(args: argparse.Namespace) -> None:
    model = load_taef2(args.weights)
    names = {"ct": args.ct_name, "mr": args.mr_name}
    patients = sorted(p for p in args.split.iterdir() if all((p / n).is_file() for n in names.values()))
    if not patients:
        raise SystemExit(f"{args.split}: no patient folder with {args.ct_name} and {args.mr_name}")
    model.decode(model.encode(torch.zeros(1, 3, args.sizes[0], args.sizes[0])))  # warm-up, untimed

    records = []
    for size in args.sizes:
        spec = SliceSpec(size=size, spacing_mm=args.spacing)
        for kind, body_mask in MODALITIES.items():
            for p in patients:
                vol, spacing = read_nifti(p / names[kind])
                s = volume_to_slices(vol, spacing, spec, kind=kind)
                body = mask_to_slices(body_mask(vol), spacing, spec)
                if args.max_slices and len(s) > args.max_slices:
                    keep = slice((len(s) - args.max_slices) // 2, (len(s) - args.max_slices) // 2 + args.max_slices)
                    s, body = s[keep], body[keep]
                r, sec = reconstruct(model, s, args.batch)
                sc = image_scores(r * 255.0, s * 255.0, mask=body, slice_axis=0, percentiles=None)
                records.append(dict(size=size, kind=kind, patient=p.name, slices=len(s), seconds=sec, **sc))
                print(f"  {size} {kind} {p.name}: {len(s)} slices, SSIM {sc['ssim']:.1f} %, PSNR {sc['psnr']:.1f} dB, "
                      f"body {sc['ssim_body']:.1f} % / {sc['psnr_body']:.1f} dB, {sec / len(s):.3f} s/slice", flush=True)

    print(f"\nmachine: {cpu_name()}, torch threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"Python {platform.python_version()}")
    print(f"data: {len(patients)} patients from {args.split}; slices at {args.spacing} mm; "
          "scores are means over patients (per patient: SSIM over its slices, PSNR from its MSE)\n")
    print("| size | modality | slices | SSIM % | PSNR dB | SSIM body % | PSNR body dB | s/slice (enc+dec) |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for kind in MODALITIES:
            rs = [r for r in records if r["size"] == size and r["kind"] == kind]
            m = {k: float(np.mean([r[k] for r in rs])) for k in ("ssim", "psnr", "ssim_body", "psnr_body")}
            n = sum(r["slices"] for r in rs)
            print(f"| {size} | {kind.upper()} | {n} | {m['ssim']:.1f} | {m['psnr']:.1f} | {m['ssim_body']:.1f} "
                  f"| {m['psnr_body']:.1f} | {sum(r['seconds'] for r in rs) / n:.3f} |")
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
