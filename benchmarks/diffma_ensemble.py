"""Does averaging image-regression runs (seeds of one recipe) raise the scores? Each run predicts the
validation pairs once (one pass, no flips), cached as npz; then the mean prediction of disjoint groups
of k runs is scored with issue #13's protocol, for k = 1 to 5, and of all runs together.

    python benchmarks/diffma_ensemble.py DATA/validation CACHE RUN [RUN ...]

Why: if the runs' errors were independent, averaging k of them would cut the part of the MSE that
varies between seeds; the README's seed study uses this to ask whether what is left is shared.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from rtgen.data.sources.image_pairs import find_pairs, load_pair
from rtgen.inference import load_predictor
from rtgen.tasks.image_base import score_volume

from diffma_sampling import predict  # benchmarks/: one pass, as `rtgen predict` makes it


def predictions(run: str, pairs, cache: Path) -> dict[str, np.ndarray]:
    f = cache / (run.strip("/").replace("/", "_") + ".npz")
    if not f.exists():
        p = load_predictor(Path(run), "cpu")
        np.savez(f, **{pair.id: predict(p, pair, "once").astype(np.float32) for pair in pairs})
    z = np.load(f)
    return {pair.id: z[pair.id] for pair in pairs}


def main() -> None:
    torch.set_num_threads(2)
    val, cache, runs = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    cache.mkdir(parents=True, exist_ok=True)
    pairs = [load_pair(f) for f in find_pairs(val)]
    vols = {run: predictions(run, pairs, cache) for run in runs}

    def score(members: list[str]) -> tuple[float, float]:
        rows = [score_volume(np.mean([vols[r][pair.id] for r in members], 0), pair) for pair in pairs]
        return round(float(np.mean([r["ssim"] for r in rows])), 2), round(float(np.mean([r["psnr"] for r in rows])), 2)

    for k in range(1, 6):
        groups = [runs[i:i + k] for i in range(0, len(runs) - k + 1, k)]
        if not groups:
            break
        res = [score(g) for g in groups]
        print(f"k={k}: {len(groups)} disjoint groups, SSIM {np.mean([r[0] for r in res]):.2f} %, "
              f"PSNR {np.mean([r[1] for r in res]):.3f} dB (each: {res})", flush=True)
    print(f"all {len(runs)}: SSIM / PSNR {score(runs)}")


if __name__ == "__main__":
    main()
