"""The DiffMa ablation table in the formulation `hub:diffma_sts` ships: each row is a refiner trained
as the shipped one was (on a UNet base model's MR, `configs/diffma_cpu_refiner.yaml`, 6 epochs), then
given the shipped base (`hub:unet_sts`) and sampled as shipped (10 DDIM steps from t = 30), over
several training seeds, on the validation pairs.

    python benchmarks/diffma_refiner_table.py DATA RUNS --train-base UNET_L1 [--seeds 0 1 2] [--only diffma dit ...]
    python benchmarks/diffma_refiner_table.py --smoke

DATA holds `train/` and `validation/` registered pairs (`rtgen register` output); UNET_L1 is the
base model the refiners train on (`rtgen train configs/diffma_cpu_base.yaml train.epochs=8`, as the
shipped refiner's). Each (row, seed) trains once into RUNS/<row>_s<seed> (skipped when its run
exists), then is scored with `--base` (default: the shipped hub:unet_sts) copied into its `base/`, as
`rtgen predict` + `rtgen evaluate` score it (DiffMa scoring: per-patient 0.5/99.5 percentile
normalisation, MR grid). One JSON line per run, then a Markdown table of mean ± sd over seeds.
Seconds per slice: one patient's prediction over the slices it synthesised, model loaded, on this
machine's cores. `--smoke` checks every row's training command without running it and scores the
shipped refiner as the `diffma` row on 2 slices of the test pair (one DDIM step).

Why: plain latent diffusion rows sat within one run's epoch-to-epoch swing of each other; the shipped
model refines a base model's MR instead, and the rows differ by tenths of a dB, so they need seeds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import common
import numpy as np
import torch

from rtgen.data.sources.image_pairs import find_pairs, load_pair
from rtgen.inference import load_predictor, resolve_model

CONFIG = "configs/diffma_cpu_refiner.yaml"
SETTING = "ddim:10@0.03"  # hub:diffma_sts's sampling
SCORES = ("ssim", "psnr", "mse", "ssim_body", "psnr_body")


def train_command(row: str, seed: int, data: Path, out: Path, train_base: Path, epochs: int, cache: Path) -> list[str]:
    overrides, _ = common.DIFFMA_VARIANTS[row]
    return [sys.executable, "-m", "rtgen", "train", CONFIG, f"data.train={data / 'train'}",
            f"data.val={data / 'validation'}", f"data.cache={cache}", f"base.run={train_base}",
            "base.flip_average=true", f"train.epochs={epochs}", f"train.seed={seed}", *overrides, "--out", str(out)]


def train(row: str, seed: int, data: Path, runs: Path, train_base: Path, epochs: int, cache: Path) -> Path:
    out = runs / f"{row}_s{seed}"
    if (out / "config.json").is_file():
        return out
    with open(runs / f"{row}_s{seed}.log", "w") as log:
        subprocess.run(train_command(row, seed, data, out, train_base, epochs, cache), stdout=log,
                       stderr=subprocess.STDOUT, check=True)
    return out


def with_base(run: Path, base: Path, work: Path) -> Path:
    """A copy of `run` (in `work`) whose base model is `base` (its config and weights), as hub:diffma_sts
    was made."""
    swap = work / f"{run.name}_swap"
    shutil.rmtree(swap, ignore_errors=True)
    shutil.copytree(run, swap, ignore=shutil.ignore_patterns("last", "tensorboard"))
    (swap / "base").mkdir(exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(base / name, swap / "base" / name)
    return swap


def score(run: Path, pairs: list, setting: str) -> dict:
    pred = load_predictor(run, "cpu")
    rows, seconds = common.score_setting(pred, pairs, setting)
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


def smoke(a: argparse.Namespace) -> None:
    from rtgen.engine.config import load_config

    work = common.smoke_dir("refiner-table")
    data, train_base = a.data or Path("data/ct-mr-registered"), a.train_base or Path("runs/diffma_cpu_base")
    for row in a.only:
        cmd = train_command(row, 0, data, work / f"{row}_s0", train_base, a.epochs, work / "cache")
        load_config(common.REPO / CONFIG, cmd[5:cmd.index("--out")])
        print(json.dumps({"row": row, "checked": " ".join(["rtgen", *cmd[3:]])}), flush=True)
    pairs = [common.central_pair_slices(load_pair(f), 2) for f in find_pairs(common.TEST_PAIRS)]
    shipped = with_base(resolve_model("hub:diffma_sts"), resolve_model(a.base), work)
    r = {"row": "diffma", "seed": 0, **score(shipped, pairs, "ddim:1@0.03")}
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
    print(table([r]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, nargs="?")
    ap.add_argument("runs", type=Path, nargs="?")
    ap.add_argument("--train-base", type=Path, help="the UNet run the refiners train on")
    ap.add_argument("--base", default="hub:unet_sts", help="the base model they are scored with (run or hub:NAME)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="+", choices=list(common.DIFFMA_VARIANTS), default=list(common.DIFFMA_VARIANTS))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--cache", type=Path, help="latent and base cache (default RUNS/cache): share one between tables")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="seconds: check the rows' commands, score the shipped refiner")
    a = ap.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(a.threads)
    try:
        if a.smoke:
            return smoke(a)
        if not a.data or not a.runs or not a.train_base:
            ap.error("DATA, RUNS and --train-base are required (or --smoke)")
        a.runs.mkdir(parents=True, exist_ok=True)
        pairs = [load_pair(f) for f in find_pairs(a.data / "validation")]
        base = resolve_model(a.base)
        results = []
        for seed in a.seeds:  # seed-major: a stopped run still has every row at least once
            for row in a.only:
                run = train(row, seed, a.data, a.runs, a.train_base, a.epochs, a.cache or a.runs / "cache")
                r = {"row": row, "seed": seed, **score(with_base(run, base, a.runs), pairs, SETTING)}
                results.append(r)
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
        print(table(results))
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
