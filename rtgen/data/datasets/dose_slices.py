"""Axial 2D slices for training: features, scaled dose and possible dose mask per slice.

Only slices that touch the possible dose mask are kept. Augmentation (rtgen.data.transforms.augment)
uses MONAI dictionary transforms so every key (all input channels, the target and the mask) gets the same draw.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from rtgen.data.records import Patient
from rtgen.data.sources import load_patient
from rtgen.data.transforms.features import FeatureConfig, patient_features, scale_dose


@dataclass
class PatientSlices:
    """The kept axial slices of one patient, ready for a network."""

    id: str
    keep: np.ndarray  # slice indices along the axial (last) axis
    images: np.ndarray  # (K, C, H, W)
    doses: np.ndarray | None  # (K, H, W) scaled to [-1, 1]; None for unlabeled patients
    masks: np.ndarray  # (K, H, W) bool possible dose mask
    grid: tuple[int, ...] = ()  # the patient's full grid (H, W, D); predictions are assembled onto it


def patient_slices(patient: Patient | str | Path, config: FeatureConfig = FeatureConfig(),
                   storage_dtype=np.float16) -> PatientSlices:
    """Features of the slices that touch the possible dose mask (a path is read first)."""
    if not isinstance(patient, Patient):
        patient = load_patient(patient)
    keep = np.flatnonzero(patient.possible_dose_mask.any(axis=(0, 1)))
    feats = patient_features(patient, config)[..., keep]  # (C, H, W, K)
    doses = None
    if patient.dose is not None:
        doses = np.moveaxis(scale_dose(patient.dose[..., keep], config.dose_max_gy), -1, 0).astype(storage_dtype)
    return PatientSlices(
        patient.id, keep, np.ascontiguousarray(np.moveaxis(feats, -1, 0), dtype=storage_dtype), doses,
        np.ascontiguousarray(np.moveaxis(patient.possible_dose_mask[..., keep], -1, 0)), patient.grid,
    )


def build_slices(patients: Sequence, config: FeatureConfig = FeatureConfig(), storage_dtype=np.float16,
                 workers: int = 0, progress: bool = True, desc: str = "building slices") -> list[PatientSlices]:
    """patient_slices for many patients (Patient objects or paths), in worker processes if workers > 1."""
    bar = tqdm(total=len(patients), desc=desc, unit="patient", disable=not progress)
    out = []
    if workers > 1 and len(patients) > 1:
        import multiprocessing as mp

        job = functools.partial(patient_slices, config=config, storage_dtype=storage_dtype)
        with mp.get_context("spawn").Pool(workers) as pool:
            for item in pool.imap(job, patients):
                out.append(item)
                bar.update()
    else:
        for p in patients:
            out.append(patient_slices(p, config, storage_dtype))
            bar.update()
    bar.close()
    return out


class SliceDataset(Dataset):
    """Axial slices of `patients` (Patient objects, paths, or prebuilt PatientSlices; each needs a dose).

    Items are dicts: image (C, H, W) float32, dose (1, H, W) in [-1, 1], mask (1, H, W),
    patient (id) and slice (index along the axial, last, axis). Slices are stored as
    float16 by default to halve memory; pass ``storage_dtype=np.float32`` for exactness.
    """

    def __init__(
        self,
        patients: Sequence,
        config: FeatureConfig = FeatureConfig(),
        transform=None,
        storage_dtype=np.float16,
        progress: bool = True,
        seed: int | None = None,
        workers: int = 0,
    ):
        self.config = config
        self.transform = transform
        if seed is not None:
            self.set_random_state(seed)
        if patients and all(isinstance(p, PatientSlices) for p in patients):
            self.patients = list(patients)
        else:
            self.patients = build_slices(patients, config, storage_dtype, workers, progress)
        self.index = []
        for p, ps in enumerate(self.patients):
            if ps.doses is None:
                raise ValueError(f"patient {ps.id} has no dose; training slices need one")
            self.index += [(p, j) for j in range(len(ps.keep))]

    def set_random_state(self, seed: int) -> None:
        """Reseed the random transform (the trainer does it every epoch, so a resumed run repeats its draws)."""
        if self.transform is not None and hasattr(self.transform, "set_random_state"):
            self.transform.set_random_state(seed)

    # views kept for tests and tools that poke at the stored arrays
    @property
    def images(self):
        return [p.images for p in self.patients]

    @property
    def doses(self):
        return [p.doses for p in self.patients]

    @property
    def masks(self):
        return [p.masks for p in self.patients]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        p, j = self.index[i]
        ps = self.patients[p]
        item = {
            "image": torch.from_numpy(ps.images[j].astype(np.float32)),
            "dose": torch.from_numpy(ps.doses[j][None].astype(np.float32)),
            "mask": torch.from_numpy(ps.masks[j][None].astype(np.float32)),
        }
        if self.transform is not None:
            item = self.transform(item)
            item = {key: torch.as_tensor(v).float().contiguous() for key, v in item.items()}
        item["patient"], item["slice"] = ps.id, int(ps.keep[j])
        return item
