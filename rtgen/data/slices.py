"""Axial 2D slices for training: features, scaled dose and possible dose mask per slice.

Only slices that touch the possible dose mask are kept. Augmentation uses MONAI dictionary
transforms so every key (all input channels, the target and the mask) gets the same draw.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from monai.transforms import Compose, RandAffined, RandFlipd
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from rtgen.data.features import FeatureConfig, patient_features, scale_dose
from rtgen.data.openkbp import Patient

KEYS = ("image", "dose", "mask")


def default_augmentation(
    rotate_deg: float = 15.0, scale: float = 0.1, translate_px: float = 8.0, prob: float = 0.5
) -> Compose:
    """Random flips on both in-plane axes and a small random affine, shared by every key."""
    return Compose(
        [
            RandFlipd(keys=KEYS, prob=0.5, spatial_axis=0),
            RandFlipd(keys=KEYS, prob=0.5, spatial_axis=1),
            RandAffined(
                keys=KEYS,
                prob=prob,
                rotate_range=(np.deg2rad(rotate_deg),),
                scale_range=(scale, scale),
                translate_range=(translate_px, translate_px),
                mode=("bilinear", "bilinear", "nearest"),
                padding_mode="border",
            ),
        ]
    )


class SliceDataset(Dataset):
    """Axial slices of `patients` (each needs CT and dose).

    Items are dicts: image (C, H, W) float32, dose (1, H, W) in [-1, 1], mask (1, H, W),
    patient (id) and slice (index along the axial, last, axis). Slices are stored as
    float16 by default to halve memory; pass ``storage_dtype=np.float32`` for exactness.
    """

    def __init__(
        self,
        patients: Sequence[Patient],
        config: FeatureConfig = FeatureConfig(),
        transform=None,
        storage_dtype=np.float16,
        progress: bool = True,
        seed: int | None = None,
    ):
        self.config = config
        self.transform = transform
        if transform is not None and seed is not None and hasattr(transform, "set_random_state"):
            transform.set_random_state(seed)
        self.images, self.doses, self.masks, self.index = [], [], [], []
        for patient in tqdm(patients, desc="building slices", unit="patient", disable=not progress):
            if patient.dose is None:
                raise ValueError(f"patient {patient.id} has no dose; training slices need one")
            keep = np.flatnonzero(patient.possible_dose_mask.any(axis=(0, 1)))
            feats = patient_features(patient, config)[..., keep]  # (C, H, W, K)
            self.images.append(np.ascontiguousarray(np.moveaxis(feats, -1, 0), dtype=storage_dtype))
            self.doses.append(np.moveaxis(scale_dose(patient.dose[..., keep], config.dose_max_gy), -1, 0).astype(storage_dtype))
            self.masks.append(np.moveaxis(patient.possible_dose_mask[..., keep], -1, 0))
            p = len(self.images) - 1
            self.index += [(p, j, patient.id, int(k)) for j, k in enumerate(keep)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        p, j, pid, k = self.index[i]
        item = {
            "image": torch.from_numpy(self.images[p][j].astype(np.float32)),
            "dose": torch.from_numpy(self.doses[p][j][None].astype(np.float32)),
            "mask": torch.from_numpy(self.masks[p][j][None].astype(np.float32)),
        }
        if self.transform is not None:
            item = self.transform(item)
            item = {key: torch.as_tensor(v).float().contiguous() for key, v in item.items()}
        item["patient"], item["slice"] = pid, k
        return item
