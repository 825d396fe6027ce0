"""TAEF2 reconstruction of CT and MR slices: python benchmarks/vae_recon.py SPLIT [--sizes 128 224] [--spacing 1.25].

SPLIT holds one folder per patient with ct.nii.gz and mr_t1.nii.gz (the sarcoma validation split).
Each volume is cut into slices as rtgen.data.transforms.slices does for training (CT window, MR
percentiles, in-plane resampling, centred pad/crop), encoded and decoded by TAEF2, and scored per
patient with rtgen.imaging.scores on the [0, 1] -> 0-255 slices (no further percentile
normalisation: the input is already the model's intensity scale), over the whole slice and inside
the body mask. A latent diffusion model cannot beat these numbers: they bound what the VAE lets
through. Prints a markdown table with the machine; timings use one thread unless --threads says.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from rtgen.core.atomic import atomic_write_text
from rtgen.data.sources.nifti import read_nifti
from rtgen.data.transforms.slices import SliceSpec, body_mask_ct, body_mask_mr, mask_to_slices, to_rgb, volume_to_slices
from rtgen.imaging.scores import image_scores
from rtgen.models.taef2 import TAEF2, load_taef2

MODALITIES = {"ct": ("ct.nii.gz", body_mask_ct), "mr": ("mr_t1.nii.gz", body_mask_mr)}


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
def reconstruct(vae: TAEF2, slices: np.ndarray, batch: int) -> tuple[np.ndarray, float]:
    """(N, H, W) in [0, 1] -> its TAEF2 reconstruction (channel mean, clamped) and the seconds spent."""
    out, seconds = [], 0.0
    for i in range(0, len(slices), batch):
        x = torch.from_numpy(to_rgb(slices[i:i + batch]).copy())
        t = time.perf_counter()
        r = vae.decode(vae.encode(x))
        seconds += time.perf_counter() - t
        out.append(r.clamp(0, 1).mean(dim=1).numpy())
    return np.concatenate(out), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("split", type=Path, help="folder of patient folders with ct.nii.gz and mr_t1.nii.gz")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128])
    ap.add_argument("--spacing", type=float, default=SliceSpec.spacing_mm, help="in-plane mm per pixel")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--weights", type=Path, default=None, help="TAEF2 folder (default: the copy shipped in rtgen)")
    ap.add_argument("--json", type=Path, default=None, help="also write per-patient scores here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    vae = load_taef2(args.weights)
    patients = sorted(p for p in args.split.iterdir() if (p / "ct.nii.gz").is_file() and (p / "mr_t1.nii.gz").is_file())
    if not patients:
        raise SystemExit(f"{args.split}: no patient folder with ct.nii.gz and mr_t1.nii.gz")
    vae.decode(vae.encode(torch.zeros(1, 3, args.sizes[0], args.sizes[0])))  # warm-up, untimed

    records = []
    for size in args.sizes:
        spec = SliceSpec(size=size, spacing_mm=args.spacing)
        for kind, (name, body_mask) in MODALITIES.items():
            for p in patients:
                vol, spacing = read_nifti(p / name)
                s = volume_to_slices(vol, spacing, spec, kind=kind)
                body = mask_to_slices(body_mask(vol), spacing, spec)
                r, sec = reconstruct(vae, s, args.batch)
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
