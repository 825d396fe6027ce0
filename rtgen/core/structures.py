"""The OpenKBP region-of-interest vocabulary shared by data, features and dosimetry."""

from __future__ import annotations

import numpy as np

GRID_SHAPE = (128, 128, 128)
"""OpenKBP volumes are 128^3; the last axis is axial (slice thickness in voxel_dimensions[2]).
Other sources may hold any grid: code past the OpenKBP reader takes the grid from the record."""

CT_OFFSET = 1024
"""OpenKBP stores CT as HU + 1024; CT windows in feature configs are in those units."""

TARGETS = ("PTV56", "PTV63", "PTV70")
OARS = (
    "Brainstem",
    "SpinalCord",
    "RightParotid",
    "LeftParotid",
    "Esophagus",
    "Larynx",
    "Mandible",
)
STRUCTURES = TARGETS + OARS
"""Canonical order used for channels, tables and DVH plots."""

PRESCRIPTION_GY = {"PTV56": 56.0, "PTV63": 63.0, "PTV70": 70.0}


def targets_union(structures: dict) -> np.ndarray | None:
    """The union of the patient's non-empty target masks, or None when it has none."""
    union = None
    for t in TARGETS:
        m = structures.get(t)
        if m is not None and m.any():
            union = m.copy() if union is None else union | m
    return union


def is_target(name: str) -> bool:
    return name in PRESCRIPTION_GY


def pack_structures(structures: dict, shape) -> np.ndarray:
    """Structure masks -> one uint16 volume, bit k set where STRUCTURES[k] covers the voxel (overlaps kept)."""
    bits = np.zeros(shape, np.uint16)
    for k, name in enumerate(STRUCTURES):
        if name in structures:
            bits[structures[name]] |= np.uint16(1 << k)
    return bits


def unpack_structures(bits: np.ndarray) -> dict:
    """The inverse of `pack_structures`: the masks of the structures present."""
    out = {name: (bits >> k) & 1 == 1 for k, name in enumerate(STRUCTURES)}
    return {k: v for k, v in out.items() if v.any()}
