"""Score one trained CT -> MR diffusion run on a split under several samplers, step counts and start
strengths, with issue #13's protocol (the scores `rtgen predict` + `rtgen evaluate` give).

    python benchmarks/diffma_sampling.py RUN DATA/validation ode:1 ode:10 ddim:10 ddim:10@0.1

Each setting is SAMPLER:STEPS[@STRENGTH][xK]; a strength below 1 starts from the run's prior (a run
trained with `prior.run`, see configs/diffma_prior_cpu.yaml), 1 (the default) from pure noise; xK
averages K samples (`rtgen predict --samples K`).
An image_regression run (the UNet) takes the settings `once` and `flips` (the mean over the slice
and its three in-plane flips: `predict.flip_average`, as `prior.flip_average` runs a prior).
`--fp32` keeps TAEF2 in float32 where the run asks for bfloat16 (`latent.cpu_bf16`).
`--no-fov` also synthesises the MR's zero padding (`data.mr_fov=false`), which scores it against zeros.
Why: the runs' validation records one sampling setting, and how much the sampler costs or adds is
the question the README's DiffMa sections answer with these rows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from rtgen.data.sources.image_pairs import find_pairs, load_pair
from rtgen.inference import load_predictor
from rtgen.tasks.dose_base import SamplingConfig
from rtgen.tasks.image_base import score_volume


def predict(pred, pair, setting: str) -> np.ndarray:
    task = pred.task
    if task.name == "image_regression":
        if setting not in ("once", "flips"):
            raise SystemExit(f"{setting}: a regression run takes the settings once and flips")
        task.predict.flip_average = setting == "flips"
        return task.predict_pair(pred.model, pair, "cpu", 64)  # as `rtgen predict` makes it
    setting, _, samples = setting.partition("x")
    head, _, strength = setting.partition("@")
    sampler, steps = head.split(":")
    task.diffusion.start_strength = float(strength or 1.0)
    return task.predict_pair(pred.model, pair, "cpu", 64, SamplingConfig(sampler, int(steps), int(samples or 1), 0))


def score_setting(pred, pairs, setting: str) -> tuple[list[dict], list[float]]:
    """Each pair's scores (as `rtgen evaluate` gives them) and seconds to predict, model loaded."""
    rows, seconds = [], []
    for pair in pairs:
        t0 = time.perf_counter()
        vol = predict(pred, pair, setting)
        seconds.append(time.perf_counter() - t0)
        rows.append(score_volume(vol, pair))
    return rows, seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("split", type=Path)
    ap.add_argument("settings", nargs="+", help="SAMPLER:STEPS[@STRENGTH], e.g. ode:10 or ddim:10@0.1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-fov", action="store_true", help="synthesise the MR's zero padding too (data.mr_fov=false)")
    ap.add_argument("--fp32", action="store_true", help="TAEF2 in float32 even if the run sets latent.cpu_bf16")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    pred = load_predictor(a.run, "cpu")
    pred.task.data.mr_fov = not a.no_fov
    if a.fp32 and hasattr(pred.task, "latent"):
        pred.task.latent.cpu_bf16 = False
    pairs = [load_pair(f) for f in find_pairs(a.split)]
    for setting in a.settings:
        t0 = time.perf_counter()
        rows, seconds = score_setting(pred, pairs, setting)
        mean = {k: round(float(np.mean([r[k] for r in rows])), 2) for k in rows[0]}
        each = {p.id: [round(r["ssim"], 1), round(r["psnr"], 2), round(s, 1)] for p, r, s in zip(pairs, rows, seconds)}
        print(json.dumps({"setting": setting, **mean, "seconds": round(time.perf_counter() - t0, 1),
                          "patients (ssim, psnr, seconds to predict)": each}), flush=True)


if __name__ == "__main__":
    main()
