"""Random clinical edits of a dose: each structure's dose scaled by its own random factor.

Why: ScardNFT (DiffKT3D's nft stage) learns from how its candidates' scorecard rewards differ within a
patient. A policy that starts from a strong prior draws nearly identical candidates, so the rewards
rank noise. Unstructured latent noise makes them differ, but along directions that are mostly
irrelevant to a scorecard. Scaling each organ at risk, each target and the rest of the body by its
own factor moves exactly what the scorecard's criteria measure (target coverage, organ mean and
near-maximum doses), so a handful of candidates per patient already says which way is better.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rtgen.dosimetry.scorecard import prescription_from_name


def structure_scale_field(structures: Mapping[str, np.ndarray], shape: tuple[int, ...], sigma: float,
                          rng: np.random.Generator, limit: float = 0.5, targets: bool = True) -> np.ndarray:
    """A multiplicative field of `shape`: 1 + sigma * N(0, 1), drawn once for the voxels outside every
    structure and once per structure, constant inside each and clipped to 1 +- `limit`.

    Where structures overlap, targets win over organs at risk, and the highest-prescription target
    (PTV70 over PTV56) over the others: a voxel follows the structure whose criteria it matters most
    to. Organs are painted in name order, so their overlaps follow the last name. With
    `targets=False` every target keeps its dose (factor 1): only the organs and the rest vary."""
    if sigma < 0 or not np.isfinite(sigma):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    draw = lambda: float(np.clip(1.0 + sigma * rng.standard_normal(), 1.0 - limit, 1.0 + limit))  # noqa: E731
    field = np.full(shape, draw(), np.float32)
    rx = {n: prescription_from_name(n) for n in structures}  # None: an organ at risk
    organs = sorted(n for n in structures if rx[n] is None)
    ptvs = sorted((n for n in structures if rx[n] is not None), key=rx.get)
    for name in organs + ptvs:
        mask = np.asarray(structures[name], bool)
        if mask.shape != tuple(shape):
            raise ValueError(f"structure {name}: shape {mask.shape}, expected {tuple(shape)}")
        field[mask] = draw() if targets or rx[name] is None else 1.0
    return field
