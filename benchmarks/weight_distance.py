"""Relative L2 distance between trained runs' weights: ||w_b - w_a|| / ||w_a|| over every tensor the
runs share, for each run after the first against the first.

    python benchmarks/weight_distance.py RUN_A RUN_B [RUN_C ...]

Why: two runs that score the same may be the same model. The README's tenth measurements use it to
show that DiffMa's spiral and raster refiners, trained from one seed, barely differ at the epoch
their validation picks (0.35 %), against another seed (33 %).
"""

from __future__ import annotations

import sys

import torch

from rtgen.core.checkpoint import load_weights


def main() -> None:
    runs = sys.argv[1:]
    if len(runs) < 2:
        raise SystemExit(__doc__)
    a = load_weights(f"{runs[0]}/model.safetensors")
    norm = torch.sqrt(sum((t.double() ** 2).sum() for t in a.values()))
    for run in runs[1:]:
        b = load_weights(f"{run}/model.safetensors")
        shared = [k for k in a if k in b and a[k].shape == b[k].shape]
        diff = torch.sqrt(sum(((b[k].double() - a[k].double()) ** 2).sum() for k in shared))
        print(f"{run} vs {runs[0]}: {100 * float(diff / norm):.2f} % ({len(shared)} of {len(a)} tensors shared)")


if __name__ == "__main__":
    main()
