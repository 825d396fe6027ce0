"""The DiffMa table of issue #13: every model, baseline and ablation trained with the same budget on
the same registered pairs, scored on validation, one row each with the command that reproduces it.

    python benchmarks/diffma_table.py DATA_ROOT RUNS_DIR [--device cuda] [--jobs 6] [--budget S] [--only NAME ...]
    python benchmarks/diffma_table.py DATA_ROOT RUNS_DIR --time-cpu DATA_ROOT/validation/PATIENT

DATA_ROOT holds `train/` and `validation/` registered pairs (`rtgen register` output). Each row is
`rtgen train <config> <overrides>` run as its own process (`--jobs` at a time: small models leave a
GPU mostly idle); the autoencoder-latent row waits for the autoencoder. Scores are those each run
records for its best epoch (config.json "validation"), which `rtgen evaluate` reproduces from
`rtgen predict` output. Seconds per slice are measured separately, on the CPU (`--time-cpu`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROWS = {  # name: (config, overrides, what it shows)
    "diffma": ("configs/diffma_cpu.yaml", [], "DiffMa: spiral scan, soft mask, CBAM fusion"),
    "dit": ("configs/diffma_cpu.yaml", ["model.name=diffma_dit"], "DiT baseline (self-attention)"),
    "vim_raster": ("configs/diffma_cpu.yaml", ["model.name=diffma_vim"], "ViM bidirectional raster (ablation: raster vs spiral)"),
    "vmamba": ("configs/diffma_cpu.yaml", ["model.name=diffma_vmamba"], "VMamba 4-direction cross scan"),
    "zigma": ("configs/diffma_cpu.yaml", ["model.name=diffma_zigma"], "ZigMa zigzag"),
    "no_soft_mask": ("configs/diffma_cpu.yaml", ["model.soft_mask=false"], "ablation: soft mask off"),
    "sum_fusion": ("configs/diffma_cpu.yaml", ["model.fusion=sum"], "ablation: branches summed, no CBAM"),
    "unet": ("configs/diffma_unet_baseline.yaml", [], "plain UNet regression (image space)"),
    "lookup": ("configs/diffma_lookup_baseline.yaml", [], "HU-to-intensity lookup table"),
    "vae_kl": ("configs/diffma_vae.yaml", [], "MONAI AutoencoderKL trained on the slices (reconstruction)"),
    "diffma_kl": ("configs/diffma_cpu.yaml", ["latent.vae=autoencoder_kl", "latent.vae_run={runs}/vae_kl"],
                  "ablation: DiffMa on AutoencoderKL latents instead of TAEF2"),
    "diffma_b": ("configs/diffma_b.yaml", [], "DiffMa-B at the paper's settings (GPU)"),
    "diffma_prior": ("configs/diffma_prior_cpu.yaml", ["prior.run={runs}/unet"],
                     "DiffMa refining the UNet row's MR (not in the paper)"),
}
AFTER = {"diffma_kl": "vae_kl", "diffma_prior": "unet"}  # rows that need another row's run
DIFFUSION_EPOCHS = None  # --diffusion-epochs: the CPU-size diffusion rows' budget
DEADLINE = None  # --budget: rows still training then are stopped (their best epoch so far stands)


def command(name: str, data: Path, runs: Path, device: str, epochs: int | None, extra: list[str]) -> list[str]:
    config, overrides, _ = ROWS[name]
    cmd = [sys.executable, "-m", "rtgen", "train", config, f"data.train={data / 'train'}",
           f"data.val={data / 'validation'}", f"train.device={device}", "--out", str(runs / name)]
    if "diffma_vae" not in config and "unet" not in config and "lookup" not in config:
        cmd.append(f"data.cache={runs / 'cache'}")
    diffusion = config in ("configs/diffma_cpu.yaml", "configs/diffma_b.yaml", "configs/diffma_prior_cpu.yaml")
    cmd += [o.format(runs=runs) for o in overrides]
    cmd += [o for o in extra if diffusion or not o.startswith(("diffusion.", "latent."))]  # sections only they have
    if epochs:
        cmd.append(f"train.epochs={epochs}")
    if diffusion and DIFFUSION_EPOCHS and name != "diffma_b":
        cmd.append(f"train.epochs={DIFFUSION_EPOCHS}")
    return cmd


def run_row(name, data, runs, device, epochs, extra) -> dict:
    cmd = command(name, data, runs, device, epochs, extra)
    t0 = time.time()
    with open(runs / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=max(1.0, DEADLINE - time.time()) if DEADLINE else None)
        except subprocess.TimeoutExpired:  # out of budget: its best checkpoint so far is what it scored
            proc.terminate()
            rc = proc.wait()
    cfg = runs / name / "config.json"
    result = {"row": name, "rc": rc, "minutes": round((time.time() - t0) / 60, 2),
              "command": " ".join(["rtgen", *cmd[3:]])}
    if cfg.is_file():
        c = json.loads(cfg.read_text())
        result.update(validation=c.get("validation"), parameters=c["model"].get("parameters"),
                      hardware=c["training"].get("hardware"))
    print(json.dumps(result), flush=True)
    return result


def time_cpu(runs: Path, patient: Path, steps: int = 10) -> None:
    """Seconds per slice of each finished row predicting one patient on this machine's CPU (2 threads:
    the target machine), the prediction as `rtgen predict` makes it (TAEF2 encode, sampling in `steps`
    steps with the run's own sampler, decode, back on the CT grid; with a prior, the prior first)."""
    import platform

    import torch

    from rtgen.core.errors import RtgenError
    from rtgen.data.sources.image_pairs import load_pair
    from rtgen.inference import load_predictor
    from rtgen.tasks.dose_base import SamplingConfig

    torch.set_num_threads(2)
    pair = load_pair(patient, need_mr=False, mr_geometry_only=True)  # as `rtgen predict` reads it
    print(f"CPU timing on {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"patient {pair.id} ({pair.ct.shape[2]} slices)")
    for run in sorted(p for p in runs.iterdir() if (p / "config.json").is_file()):
        try:
            pred = load_predictor(run, "cpu")
        except RtgenError as e:  # e.g. a run whose weights were not kept
            print(json.dumps({"row": run.name, "skipped": str(e)}), flush=True)
            continue
        if getattr(pred.task, "output_kind", "") != "image" or pred.task.name == "image_autoencoder":
            continue
        sampling = SamplingConfig(None, steps, 1, 0) if pred.task.stochastic else None  # None: the run's own sampler
        t0 = time.perf_counter()
        pred.task.predict_pair(pred.model, pair, pred.device, 64, sampling)
        dt = time.perf_counter() - t0
        print(json.dumps({"row": run.name, "seconds_per_patient": round(dt, 2),
                          "seconds_per_slice": round(dt / pair.ct.shape[2], 4)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("runs", type=Path)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=None, help="every row (default: each config's own)")
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--extra", nargs="*", default=[], help="overrides added to every row")
    ap.add_argument("--time-cpu", type=Path, default=None, metavar="PATIENT",
                    help="only time the finished rows in RUNS predicting this patient on the CPU")
    ap.add_argument("--budget", type=float, default=None, help="seconds; rows still running then are stopped")
    ap.add_argument("--diffusion-epochs", type=int, default=None, help="the CPU-size diffusion rows only")
    a = ap.parse_args()
    if a.time_cpu:
        return time_cpu(a.runs, a.time_cpu)
    global DIFFUSION_EPOCHS, DEADLINE
    DIFFUSION_EPOCHS = a.diffusion_epochs
    DEADLINE = time.time() + a.budget if a.budget else None
    a.runs.mkdir(parents=True, exist_ok=True)
    rest = a.only or list(ROWS)  # with --jobs 1 the first TAEF2 row fills the latent cache the others reuse
    results = []
    with ThreadPoolExecutor(a.jobs) as pool:
        futures = {n: pool.submit(run_row, n, a.data, a.runs, a.device, a.epochs, a.extra)
                   for n in rest if n not in AFTER}
        for n in rest:
            if n in AFTER:
                dep = futures.get(AFTER[n])
                if dep is not None:
                    dep.result()
                futures[n] = pool.submit(run_row, n, a.data, a.runs, a.device, a.epochs, a.extra)
        results += [f.result() for f in futures.values()]
    (a.runs / "table.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
