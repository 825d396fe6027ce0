"""What trivial inputs score under DiffMa scoring (per-patient 0.5/99.5 percentile normalisation,
MR grid), against each validation MR: the real MR blurred with sigma = 4 voxels (in-plane), shifted
by 5 voxels, and the CT itself. A check of the scoring protocol: a synthetic MR must beat the CT.

    python benchmarks/diffma_reference_inputs.py data/ct-mr-registered/validation
    python benchmarks/diffma_reference_inputs.py --smoke
"""

from __future__ import annotations

import argparse
from pathlib import Path

import common
import numpy as np
from scipy import ndimage

from rtgen.data.sources.image_pairs import find_pairs, load_pair
from rtgen.data.transforms.image_slices import body_mask_mr
from rtgen.imaging import image_scores


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("split", type=Path, nargs="?", help="registered CT/MR pairs (`rtgen register` output)")
    ap.add_argument("--smoke", action="store_true", help="seconds: the test pair in tests/data")
    a = ap.parse_args(argv)
    if a.smoke:
        a.split = a.split or common.TEST_PAIRS
    if a.split is None:
        ap.error("SPLIT is required (or --smoke)")
    for folder in find_pairs(a.split):
        pair = load_pair(folder)
        body = body_mask_mr(pair.mr)
        inputs = {"MR blurred sigma 4": ndimage.gaussian_filter(pair.mr, (4, 4, 0)),
                  "MR shifted 5 voxels": np.roll(pair.mr, 5, axis=0), "CT as is": pair.ct}
        print(pair.id, "  ".join(f"{k}: SSIM {s['ssim']:.1f} % PSNR {s['psnr']:.1f} dB"
                                 for k, s in ((k, image_scores(v, pair.mr, body)) for k, v in inputs.items())))


if __name__ == "__main__":
    main()
