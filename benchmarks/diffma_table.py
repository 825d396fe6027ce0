"""The DiffMa table: every model, baseline and ablation trained with the same budget on the same
registered pairs, scored on validation, one row each with the command that reproduces it.

    python benchmarks/diffma_table.py DATA_ROOT RUNS_DIR [--device cuda] [--jobs 6] [--budget S] [--only NAME ...]
    python benchmarks/diffma_table.py DATA_ROOT RUNS_DIR --time-cpu DATA_ROOT/validation/PATIENT
    python benchmarks/diffma_table.py --smoke

DATA_ROOT holds `train/` and `validation/` registered pairs (`rtgen register` output). Each row is
`rtgen train <config> <overrides>` run as its own process (`--jobs` at a time: small models leave a
GPU mostly idle); the autoencoder-latent row waits for the autoencoder. Scores are those each run
records for its best epoch (config.json "validation"), which `rtgen evaluate` reproduces from
`rtgen predict` output (DiffMa scoring: per-patient 0.5/99.5 percentile normalisation, MR grid).
Seconds per slice are measured separately, on the CPU (`--time-cpu`). `--device cuda` trains each row
on a GPU (`train.device=cuda`); several GPUs: run the rows' commands under torchrun.
`--smoke` checks every row's command (its config loads with its overrides) without training, and
times the shipped base UNet (hub:unet_sts) on 2 slices of the test pair in tests/data.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common

ROWS = {  # name: (config, overrides, what it shows)
    **{name: ("configs/diffma_cpu.yaml", overrides, what) for name, (overrides, what) in common.DIFFMA_VARIANTS.items()},
    "unet": ("configs/diffma_cpu_base.yaml", [], "plain UNet regression (image space)"),
    "lookup": ("configs/hu_lookup_cpu.yaml", [], "HU-to-intensity lookup table"),
    "autoencoder_kl": ("configs/diffma_autoencoder.yaml", [],
                       "MONAI AutoencoderKL trained on the slices (reconstruction)"),
    "diffma_kl": ("configs/diffma_cpu.yaml",
                  ["latent.autoencoder=autoencoder_kl", "latent.autoencoder_run={runs}/autoencoder_kl"],
                  "ablation: DiffMa on AutoencoderKL latents instead of TAEF2"),
    "diffma_b": ("configs/diffma.yaml", [], "DiffMa-B at the DiffMa paper's settings (GPU)"),
    "diffma_refiner": ("configs/diffma_cpu_refiner.yaml", ["base.run={runs}/unet"],
                       "DiffMa refining the UNet row's MR (not in the DiffMa paper)"),
}
DIFFUSION = ("configs/diffma_cpu.yaml", "configs/diffma.yaml", "configs/diffma_cpu_refiner.yaml")  # latent rows
AFTER = {"diffma_kl": "autoencoder_kl", "diffma_refiner": "unet"}  # rows that need another row's run
DIFFUSION_EPOCHS = None  # --diffusion-epochs: the CPU-size diffusion rows' budget
DEADLINE = None  # --budget: rows still training then are stopped (their best epoch so far stands)


def command(name: str, data: Path, runs: Path, device: str, epochs: int | None, extra: list[str]) -> list[str]:
    config, overrides, _ = ROWS[name]
    cmd = [sys.executable, "-m", "rtgen", "train", config, f"data.train={data / 'train'}",
           f"data.val={data / 'validation'}", f"train.device={device}", "--out", str(runs / name)]
    diffusion = config in DIFFUSION
    if diffusion:  # the latent cache, shared by the rows on TAEF2
        cmd.append(f"data.cache={runs / 'cache'}")
    cmd += [o.format(runs=runs) for o in overrides]
    cmd += [o for o in extra if diffusion or not o.startswith(("diffusion.", "latent."))]  # sections only they have
    if epochs:
        cmd.append(f"train.epochs={epochs}")
    if diffusion and DIFFUSION_EPOCHS and name != "diffma_b":
        cmd.append(f"train.epochs={DIFFUSION_EPOCHS}")
    return cmd


def resolve_shipped(name: str) -> Path:
    from rtgen.inference import resolve_model

    return resolve_model(name)


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


def check_row(name: str, data: Path, runs: Path, device: str, epochs: int | None, extra: list[str]) -> None:
    """A row's command checked as `rtgen train` checks it first (the config loads with its overrides),
    without training: what `--smoke` does for every row."""
    from rtgen.engine.config import load_config

    cmd = command(name, data, runs, device, epochs, extra)
    out = cmd.index("--out")
    load_config(common.REPO / cmd[4], cmd[5:out])
    print(json.dumps({"row": name, "checked": " ".join(["rtgen", *cmd[3:]])}), flush=True)


def time_cpu(runs: Path, patient: Path, steps: int = 10, max_slices: int | None = None) -> None:
    """Seconds per slice of each finished row predicting one patient on this machine's CPU (2 threads:
    the target machine), the prediction as `rtgen predict` makes it (TAEF2 encode, sampling in `steps`
    steps with the run's own sampler, decode, back on the CT grid; a refiner runs its base model first)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _time_cpu(runs, patient, steps, max_slices)
    finally:
        torch.set_num_threads(threads)


def _time_cpu(runs: Path, patient: Path, steps: int, max_slices: int | None) -> None:
    import platform

    import torch

    from rtgen.core.errors import RtgenError
    from rtgen.data.sources.image_pairs import load_pair
    from rtgen.inference import load_predictor
    from rtgen.tasks.dose_base import SamplingConfig

    pair = load_pair(patient, need_mr=False, mr_geometry_only=True)  # as `rtgen predict` reads it
    if max_slices:
        pair = common.central_pair_slices(pair, max_slices)
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, nargs="?", help="registered pairs: DATA/train and DATA/validation")
    ap.add_argument("runs", type=Path, nargs="?")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=None, help="every row (default: each config's own)")
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--extra", nargs="*", default=[], help="overrides added to every row")
    ap.add_argument("--time-cpu", type=Path, default=None, metavar="PATIENT",
                    help="only time the finished rows in RUNS predicting this patient on the CPU")
    ap.add_argument("--budget", type=float, default=None, help="seconds; rows still running then are stopped")
    ap.add_argument("--diffusion-epochs", type=int, default=None, help="the CPU-size diffusion rows only")
    ap.add_argument("--smoke", action="store_true", help="seconds: check every row's command, time hub:unet_sts")
    a = ap.parse_args(argv)
    if a.smoke:
        work = common.smoke_dir("diffma-table")
        a.data, a.runs = a.data or Path("data/ct-mr-registered"), a.runs or work / "runs"
        for name in a.only or ROWS:
            check_row(name, a.data, a.runs, a.device, a.epochs, a.extra)
        a.runs.mkdir(parents=True)
        (a.runs / "unet").symlink_to(resolve_shipped("hub:unet_sts"), target_is_directory=True)
        return time_cpu(a.runs, common.TEST_PAIRS / "sts_018", steps=1, max_slices=2)
    if not a.data or not a.runs:
        ap.error("DATA and RUNS are required (or --smoke)")
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
