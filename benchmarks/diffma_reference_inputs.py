"""Score the issue #13 reference inputs against each validation MR, to check the scoring protocol:
the real MR blurred with sigma = 4 voxels (in-plane), shifted by 5 voxels, and the CT itself.

    python benchmarks/diffma_reference_inputs.py data/ct-mr-registered/validation
"""

from __future__ import annotations

import sys

import numpy as np
from scipy import ndimage

from rtgen.data.sources.image_pairs import find_pairs, load_pair
from rtgen.data.transforms.slices import body_mask_mr
from rtgen.imaging import image_scores

for folder in find_pairs(sys.argv[1]):
    pair = load_pair(folder)
    body = body_mask_mr(pair.mr)
    inputs = {"MR blurred sigma 4": ndimage.gaussian_filter(pair.mr, (4, 4, 0)),
              "MR shifted 5 voxels": np.roll(pair.mr, 5, axis=0), "CT as is": pair.ct}
    print(pair.id, "  ".join(f"{k}: SSIM {s['ssim']:.1f} % PSNR {s['psnr']:.1f} dB"
                             for k, s in ((k, image_scores(v, pair.mr, body)) for k, v in inputs.items())))
