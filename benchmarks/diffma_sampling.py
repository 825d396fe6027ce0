"""Score one trained CT -> MR run on a split under several samplers, step counts and start
strengths, with DiffMa scoring (per-patient 0.5/99.5 percentile normalisation, MR grid: the scores
`rtgen predict` + `rtgen evaluate` give).

    python benchmarks/diffma_sampling.py RUN DATA/validation ode:1 ode:10 ddim:10 ddim:10@0.1
    python benchmarks/diffma_sampling.py hub:unet_sts DATA/validation once flips
    python benchmarks/diffma_sampling.py --smoke

RUN is a run folder or a shipped model (hub:diffma_sts, hub:unet_sts). Each setting is
SAMPLER:STEPS[@STRENGTH][xK]; a strength below 1 starts from the base model's MR (a refiner trained
with `base.run`, see configs/diffma_cpu_refiner.yaml), 1 (the default) from pure noise; xK averages K
samples (`rtgen predict --samples K`). An image_regression run (the UNet) takes the settings `once`
and `flips` (the mean over the slice and its three in-plane flips: `predict.flip_average`, as
`base.flip_average` runs a refiner's base model).
`--fp32` keeps TAEF2 in float32 where the run asks for bfloat16 (`latent.cpu_bf16`).
`--no-fov` also synthesises the MR's zero padding (`data.mr_fov=false`), which scores it against zeros.
`--smoke` scores the shipped UNet (hub:unet_sts) once and with flips on 2 slices of the test pair
in tests/data (the diffusion settings run in the smoke mode of diffma_refiner_table.py).
Why: a run's validation records one sampling setting; what the sampler costs or adds is measured here.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import common
import numpy as np
import torch

from rtgen.data.sources.image_pairs import find_pairs, load_pair
from rtgen.inference import load_predictor, resolve_model


def run(model: str, split: Path, settings: list[str], no_fov: bool = False, fp32: bool = False,
        slices: int | None = None) -> None:
    pred = load_predictor(resolve_model(model), "cpu")
    pred.task.data.mr_fov = not no_fov
    if fp32 and hasattr(pred.task, "latent"):
        pred.task.latent.cpu_bf16 = False
    pairs = [load_pair(f) for f in find_pairs(split)]
    if slices:
        pairs = [common.central_pair_slices(p, slices) for p in pairs]
    for setting in settings:
        t0 = time.perf_counter()
        rows, seconds = common.score_setting(pred, pairs, setting)
        mean = {k: round(float(np.mean([r[k] for r in rows])), 2) for k in rows[0]}
        each = {p.id: [round(r["ssim"], 1), round(r["psnr"], 2), round(s, 1)] for p, r, s in zip(pairs, rows, seconds)}
        print(json.dumps({"run": model, "setting": setting, **mean, "seconds": round(time.perf_counter() - t0, 1),
                          "patients (ssim, psnr, seconds to predict)": each}), flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", help="run folder or hub:NAME")
    ap.add_argument("split", type=Path, nargs="?")
    ap.add_argument("settings", nargs="*", help="SAMPLER:STEPS[@STRENGTH][xK], e.g. ode:10 or ddim:10@0.1; once, flips")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-fov", action="store_true", help="synthesise the MR's zero padding too (data.mr_fov=false)")
    ap.add_argument("--fp32", action="store_true", help="TAEF2 in float32 even if the run sets latent.cpu_bf16")
    ap.add_argument("--smoke", action="store_true", help="seconds: the shipped UNet on 2 slices of the test pair")
    a = ap.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(a.threads)
    try:
        if a.smoke:
            run("hub:unet_sts", common.TEST_PAIRS, ["once", "flips"], a.no_fov, slices=2)
            return
        if not a.run or not a.split or not a.settings:
            ap.error("RUN, SPLIT and at least one setting are required (or --smoke)")
        run(a.run, a.split, a.settings, a.no_fov, a.fp32)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
