"""Synthetic registered CT/MR pairs for the image tests (never the shared sarcoma data)."""

from __future__ import annotations

import nibabel as nib
import numpy as np

SPACING = (2.5, 2.5, 3.0)


def phantom(seed: int, shape=(40, 36, 5)) -> tuple[np.ndarray, np.ndarray]:
    """A limb: soft tissue ellipse (40 HU) with a bone disc (900 HU) in air; its 'MR' maps tissue to
    400 and bone to 60 (cortical bone is dark on T1), air to 5, plus noise."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    cx, cy = shape[0] / 2 + rng.uniform(-2, 2), shape[1] / 2 + rng.uniform(-2, 2)
    body = ((x - cx) / 15) ** 2 + ((y - cy) / 12) ** 2 < 1
    bone = ((x - cx - 3) / 4) ** 2 + ((y - cy) / 4) ** 2 < 1
    ct = np.where(body, 40.0, -1000.0) + np.where(bone, 860.0, 0.0)
    mr = np.where(body, 400.0, 5.0) - np.where(bone, 340.0, 0.0)
    ct = np.repeat(ct[..., None], shape[2], 2) + rng.normal(0, 5, shape)
    mr = np.repeat(mr[..., None], shape[2], 2) + rng.normal(0, 5, shape)
    return ct.astype(np.float32), mr.astype(np.float32)


def write_pair(folder, seed: int, mr_affine=None, padded_slices: int = 0) -> None:
    """`folder/{ct,mr}.nii.gz`, on one grid unless `mr_affine` moves the MR; the MR's first
    `padded_slices` slices zero padding, as in cropped clinical MRs."""
    folder.mkdir(parents=True)
    ct, mr = phantom(seed)
    mr[..., :padded_slices] = 0.0
    affine = np.diag([*SPACING, 1.0])
    nib.save(nib.Nifti1Image(ct, affine), str(folder / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(mr, affine if mr_affine is None else mr_affine), str(folder / "mr.nii.gz"))
