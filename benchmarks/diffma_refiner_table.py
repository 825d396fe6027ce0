"""Issue #13's ablation table in the formulation `hub:diffma_sts` ships: each row is a refiner trained
as the shipped one was (on a UNet prior's MR, `configs/diffma_prior_cpu.yaml`, 6 epochs), then given
the shipped prior (`hub:unet_sts`) and sampled as shipped (10 DDIM steps from t = 30), over several
training seeds, on the validation pairs.

    python benchmarks/diffma_refiner_table.py DATA RUNS --train-prior UNET_L1 [--seeds 0 1 2] [--only diffma dit ...]

DATA holds `train/` and `validation/` registered pairs (`rtgen register` output); UNET_L1 is the
prior the refiners train on (`rtgen train configs/diffma_unet_baseline.yaml train.epochs=8`, as the
shipped refiner's). Each (row, seed) trains once into RUNS/<row>_s<seed> (skipped when its run
exists), then is scored with `--prior` (default: the shipped `rtgen/hub/unet_sts`) copied into its
`prior/`, as `rtgen predict` + `rtgen evaluate` score it. One JSON line per run, then a Markdown
table of mean ± sd over seeds. Seconds per slice: one patient's prediction over the slices it
synthesised, model loaded, on this machine's cores.

Why: the earlier ablation rows (README, third measurements) were plain latent diffusion, all at
29-34 % SSIM and within one run's epoch-to-epoch swing of each other; the shipped model refines a
prior instead, and the rows differ by tenths of a dB, so they need seeds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from diffma_sampling import score_setting  # benchmarks/: one pass each, as `rtgen predict` makes it
from diffma_table import ROWS
from rtgen.data.sources.image_pairs import find_pairs, load_pair
from rtgen.inference import load_predictor

REFINER_ROWS = ["diffma", "dit", "vim_raster", "vmamba", "zigma", "no_soft_mask", "sum_fusion"]
SETTING = "ddim:10@0.03"  # hub:diffma_sts's sampling
SCORES = ("ssim", "psnr", "mse", "ssim_body", "psnr_body")


def train(row: str, seed: int, data: Path, runs: Path, train_prior: Path, epochs: int, cache: Path) -> Path:
    out = runs / f"{row}_s{seed}"
    if (out / "config.json").is_file():
        return out
    _, overrides, _ = ROWS[row]
    cmd = [sys.executable, "-m", "rtgen", "train", "configs/diffma_prior_cpu.yaml", f"data.train={data / 'train'}",
           f"data.val={data / 'validation'}", f"data.cache={cache}", f"prior.run={train_prior}",
           "prior.flip_average=true", f"train.epochs={epochs}", f"train.seed={seed}", *overrides, "--out", str(out)]
    with open(runs / f"{row}_s{seed}.log", "w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
    return out


def with_prior(run: Path, prior: Path) -> Path:
    """A copy of `run` whose prior is `prior` (its config and weights), as hub:diffma_sts was made."""
    swap = run.parent / f"{run.name}_swap"
    shutil.rmtree(swap, ignore_errors=True)
    shutil.copytree(run, swap, ignore=shutil.ignore_patterns("last", "tensorboard"))
    for name in ("config.json", "model.safetensors"):
        shutil.copy(prior / name, swap / "prior" / name)
    return swap


def score(run: Path, pairs: list) -> dict:
    pred = load_predictor(run, "cpu")
    rows, seconds = score_setting(pred, pairs, SETTING)
    slices = [int(pred.task.slices_in_view(pair, pair.ct.shape[-1]).sum()) for pair in pairs]
    out = {k: float(np.mean([r[k] for r in rows])) for k in SCORES}
    out["s_per_slice"] = float(np.mean([s / max(n, 1) for s, n in zip(seconds, slices)]))
    out["parameters"] = sum(p.numel() for p in pred.model.parameters())
    return out


def table(results: list[dict]) -> str:
    lines = ["| row | params | seeds | SSIM % | PSNR dB | MSE | SSIM body % | PSNR body dB | s / slice |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in dict.fromkeys(r["row"] for r in results):
        rs = [r for r in results if r["row"] == row]

        def cell(k, nd):
            v = np.array([r[k] for r in rs])
            return f"{v.mean():.{nd}f} ± {v.std(ddof=1):.{nd}f}" if len(v) > 1 else f"{v[0]:.{nd}f}"
        lines.append(f"| `{row}` | {rs[0]['parameters'] / 1e6:.2f} M | {len(rs)} | {cell('ssim', 2)} | {cell('psnr', 2)} | "
                     f"{cell('mse', 0)} | {cell('ssim_body', 2)} | {cell('psnr_body', 2)} | {cell('s_per_slice', 3)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("runs", type=Path)
    ap.add_argument("--train-prior", type=Path, required=True, help="the UNet run the refiners train on")
    ap.add_argument("--prior", type=Path, default=Path("rtgen/hub/unet_sts"), help="the prior they are scored with")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="+", choices=REFINER_ROWS, default=REFINER_ROWS)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--cache", type=Path, help="latent and prior cache (default RUNS/cache): share one between tables")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    a.runs.mkdir(parents=True, exist_ok=True)
    pairs = [load_pair(f) for f in find_pairs(a.data / "validation")]
    results = []
    for seed in a.seeds:  # seed-major: a stopped run still has every row at least once
        for row in a.only:
            run = train(row, seed, a.data, a.runs, a.train_prior, a.epochs, a.cache or a.runs / "cache")
            r = {"row": row, "seed": seed, **score(with_prior(run, a.prior), pairs)}
            results.append(r)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
