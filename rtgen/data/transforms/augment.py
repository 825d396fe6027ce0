"""Augmentation of 2D training items with MONAI dictionary transforms: every key (all input channels,
the target and the mask) gets the same random draw."""

from __future__ import annotations

import numpy as np
from monai.transforms import Compose, RandAffined, RandFlipd

KEYS = ("image", "dose", "mask")


def default_augmentation(
    rotate_deg: float = 15.0, scale: float = 0.1, translate_px: float = 8.0, prob: float = 0.5
) -> Compose:
    """Random flips on both in-plane axes and a small random affine, shared by every key."""
    return Compose(
        [
            RandFlipd(keys=KEYS, prob=0.5, spatial_axis=0),
            RandFlipd(keys=KEYS, prob=0.5, spatial_axis=1),
            slice_affine(("image", "dose"), ("mask",), rotate_deg, scale, prob, translate_px, padding_mode="border"),
        ]
    )


def slice_affine(image_keys: tuple[str, ...], mask_keys: tuple[str, ...], rotate_deg: float, scale: float,
                 prob: float = 0.5, translate_px: float = 0.0, padding_mode: str = "zeros") -> RandAffined:
    """A random in-plane rotation (within +-rotate_deg), zoom (1 +- scale) and shift (+-translate_px)
    about the slice centre, the same for every key: bilinear for images, nearest for masks. Zeros
    outside by default: air in a CT windowed to [0, 1], nothing acquired in an MR, outside every
    mask (CT -> MR regression on few patients, whose limbs lie at other angles and sizes)."""
    return RandAffined(keys=(*image_keys, *mask_keys), prob=prob, rotate_range=(np.deg2rad(rotate_deg),),
                       scale_range=(scale, scale), translate_range=(translate_px, translate_px),
                       mode=tuple(["bilinear"] * len(image_keys) + ["nearest"] * len(mask_keys)),
                       padding_mode=padding_mode)
