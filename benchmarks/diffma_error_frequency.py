"""Where a synthetic MR's error lies in frequency: PSNR as scored, with prediction and reference both
blurred (σ 2, 4, 8 voxels in-plane), and after an oracle smooth gain (the reference's and the
prediction's σ-10-voxel blurs divided), per patient.

    python benchmarks/diffma_error_frequency.py SYNTH REF_SPLIT

SYNTH holds `<patient>.nii.gz` (`rtgen predict` output) on the grid of REF_SPLIT/<patient>/mr.nii.gz
(`rtgen register` output). Volumes are normalised as the issue scores them (0.5/99.5 percentiles
to 0-255). Why: if blurring both barely raises PSNR, the error is coarse (intensity of whole
tissues, the MR's bias field), which no sharper synthesis fixes; the oracle gain bounds what a
smooth intensity correction could add.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from rtgen.data.sources.image_pairs import read_volume
from rtgen.imaging.similarity import normalise_percentiles


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((a - b) ** 2)))


def main() -> None:
    synth, ref = Path(sys.argv[1]), Path(sys.argv[2])
    for f in sorted(synth.glob("*.nii.gz")):
        pid = f.name[:-len(".nii.gz")]
        p = normalise_percentiles(read_volume(f)[0])
        r = normalise_percentiles(read_volume(ref / pid / "mr.nii.gz")[0])
        blurred = [psnr(gaussian_filter(p, (s, s, s / 3)), gaussian_filter(r, (s, s, s / 3))) for s in (2, 4, 8)]
        gain = gaussian_filter(r, (10, 10, 3)) / np.maximum(gaussian_filter(p, (10, 10, 3)), 5.0)
        print(f"{pid}: PSNR {psnr(p, r):.2f} dB | both blurred σ 2/4/8: {blurred[0]:.2f} / {blurred[1]:.2f} / "
              f"{blurred[2]:.2f} dB | oracle smooth gain: {psnr(np.clip(p * gain, 0, 255), r):.2f} dB", flush=True)


if __name__ == "__main__":
    main()
