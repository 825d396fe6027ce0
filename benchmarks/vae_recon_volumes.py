"""TAEF2's reconstruction of each validation MR, scored as the `image_autoencoder` task scores its own
(slices back on the patient's grid, then issue #13's protocol), so the two autoencoders compare.

    python benchmarks/vae_recon_volumes.py data/ct-mr-registered/validation [--skip PATIENT ...]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from rtgen.data.sources.image_pairs import find_pairs, load_pair
from rtgen.data.transforms.slices import SliceSpec, body_mask_mr, slices_to_volume, volume_to_slices
from rtgen.imaging import image_scores
from rtgen.models.codecs import TAEF2Codec

ap = argparse.ArgumentParser()
ap.add_argument("split")
ap.add_argument("--skip", nargs="*", default=[])
a = ap.parse_args()
torch.set_num_threads(2)
codec, spec, rows = TAEF2Codec(), SliceSpec(), []
for folder in find_pairs(a.split):
    if folder.name in a.skip:
        continue
    pair = load_pair(folder)
    s = volume_to_slices(pair.mr, pair.spacing, spec, "mr")
    with torch.no_grad():
        rec = np.concatenate([codec.decode(codec.encode(torch.from_numpy(s[i:i + 32])[:, None]))[:, 0].numpy()
                              for i in range(0, len(s), 32)])
    rows.append(image_scores(slices_to_volume(rec, pair.mr.shape, pair.spacing, spec), pair.mr, body_mask_mr(pair.mr)))
print(json.dumps({k: round(float(np.mean([r[k] for r in rows])), 2) for k in rows[0]}))
