"""Resample a patient to a model's grid and spacing, and a predicted dose back.

The shipped models are 2D axial-slice networks trained on OpenKBP volumes: 128^3 voxels of about
3.9 x 3.9 x 2.5 mm (some OpenKBP patients have 3 mm slices). A clinical CT (512 x 512 at ~1 mm,
any number of slices) shows them anatomy at a scale they never saw, so prediction resamples the
patient onto an OpenKBP-like grid, predicts there, and resamples the dose back onto the patient's
own grid. Both grids are axis-aligned and share the axis convention of rtgen's records, so the
map between them is a per-axis scale and offset (scipy.ndimage.affine_transform, linear).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from rtgen.core.errors import RtgenWarning
from rtgen.core.structures import GRID_SHAPE, TARGETS
from rtgen.data.records import Patient

MODEL_SPACING = (3.906, 3.906, 2.5)
"""OpenKBP's voxel size in mm (rows, columns, slices): the default when a checkpoint records none."""
MODEL_SHAPE = GRID_SHAPE
SPACING_RANGE_MM = ((2.5, 5.5), (2.5, 5.5), (1.25, 4.0))
"""Voxel sizes a model trained on OpenKBP has seen: its 169 training patients range from 2.73 to
5.08 mm in-plane and 1.5 to 3.3 mm between slices, each on its own 128^3 grid. A patient on a
128^3 grid inside these ranges is predicted as it is, as in training; resampling it onto one fixed
spacing would move it away from what the model learned (and cost accuracy)."""


@dataclass(frozen=True)
class GridMap:
    """Target voxel m sits at source voxel coordinate offset + m * scale (per axis)."""

    source_grid: tuple[int, int, int]
    source_spacing: tuple[float, float, float]
    target_shape: tuple[int, int, int]
    target_spacing: tuple[float, float, float]
    scale: tuple[float, float, float]
    offset: tuple[float, float, float]
    source_mask: np.ndarray | None = None  # the source possible dose mask: doses are zeroed outside it

    def to_target(self, volume: np.ndarray, order: int = 1, cval: float = 0.0) -> np.ndarray:
        return ndimage.affine_transform(np.asarray(volume, np.float32), np.asarray(self.scale),
                                        offset=np.asarray(self.offset), output_shape=self.target_shape,
                                        order=order, mode="constant", cval=cval)

    def mask_to_target(self, mask: np.ndarray) -> np.ndarray:
        """Linear interpolation of the 0/1 mask, kept where >= 0.5 (smoother than nearest neighbour)."""
        return self.to_target(mask.astype(np.float32)) >= 0.5

    def dose_to_source(self, dose: np.ndarray) -> np.ndarray:
        """A dose on the target grid -> the source grid (linear, 0 outside the target grid and outside
        the source possible dose mask), float32 Gy, >= 0."""
        scale = np.asarray(self.scale)
        out = ndimage.affine_transform(np.asarray(dose, np.float32), 1.0 / scale,
                                       offset=-np.asarray(self.offset) / scale, output_shape=self.source_grid,
                                       order=1, mode="constant", cval=0.0)
        out = np.maximum(out, 0)
        if self.source_mask is not None:
            out[~self.source_mask] = 0
        return out.astype(np.float32)


def needs_resampling(patient: Patient, spacing=MODEL_SPACING, shape=MODEL_SHAPE,
                     ranges=SPACING_RANGE_MM) -> bool:
    """True unless the patient is on the model's grid shape with voxel sizes inside the range the
    model was trained on (every OpenKBP patient is, so their predictions are unchanged)."""
    if tuple(patient.grid) != tuple(shape):
        return True
    return any(not lo <= s <= hi for s, (lo, hi) in zip(patient.spacing, ranges))


def _bbox_centre(mask: np.ndarray, axis: int) -> tuple[float, float] | None:
    """(centre, extent in voxels) of a mask along one axis, or None if it is empty."""
    other = tuple(a for a in range(mask.ndim) if a != axis)
    idx = np.flatnonzero(mask.any(axis=other))
    if idx.size == 0:
        return None
    return (idx[0] + idx[-1]) / 2.0, float(idx[-1] - idx[0] + 1)


def to_model_grid(patient: Patient, spacing=MODEL_SPACING, shape=MODEL_SHAPE,
                  with_dose: bool = True) -> tuple[Patient, GridMap]:
    """The patient on a grid of `shape` voxels of `spacing` mm, and the map back.

    The target grid is centred on the possible dose mask's bounding box; along an axis where that
    box is larger than the target field of view (a CT from vertex to carina is longer than 128 x
    2.5 mm), it is centred on the targets (PTVs) instead and an RtgenWarning says the dose outside
    the field of view will be 0. CT: Gaussian pre-smoothing when downsampling (against aliasing),
    then linear, -1024 HU outside; masks: linear >= 0.5; dose: linear.
    """
    src_spacing = tuple(float(s) for s in patient.spacing)
    scale = tuple(float(t) / s for t, s in zip(spacing, src_spacing))
    pdm = patient.possible_dose_mask
    targets = np.zeros_like(pdm)
    for t in TARGETS:
        if t in patient.structures:
            targets |= patient.structures[t]
    offset = []
    cut = []
    for ax in range(3):
        fov = shape[ax] * scale[ax]  # target field of view in source voxels
        box = _bbox_centre(pdm, ax)
        if box is None:
            centre = (pdm.shape[ax] - 1) / 2.0
        elif box[1] <= fov:
            centre = box[0]
        else:
            cut.append(ax)
            tbox = _bbox_centre(targets, ax)
            centre = tbox[0] if tbox is not None else box[0]
        # a whole source voxel: at equal spacing the grids then coincide and nothing is interpolated
        offset.append(float(np.round(centre - (shape[ax] - 1) / 2.0 * scale[ax])))
    if cut:
        warnings.warn(f"patient {patient.id}: the possible dose mask is larger than the model's field of view "
                      f"({' x '.join(f'{n * s:.0f}' for n, s in zip(shape, spacing))} mm) along axis "
                      f"{', '.join(map(str, cut))}; the grid is centred on the targets there and the predicted dose "
                      "outside it is 0", RtgenWarning, stacklevel=2)
    gmap = GridMap(tuple(pdm.shape), src_spacing, tuple(int(n) for n in shape), tuple(float(s) for s in spacing),
                   scale, tuple(offset), pdm)
    ct = None
    if patient.ct is not None:
        sigma = [max(0.0, (s - 1.0) / 2.0) for s in scale]
        src = patient.ct.astype(np.float32)
        if any(sigma):
            src = ndimage.gaussian_filter(src, sigma, mode="nearest")
        ct = np.clip(np.rint(gmap.to_target(src, cval=-1024.0)), -32768, 32767).astype(np.int16)
    dose = gmap.to_target(patient.dose).astype(np.float32) if (with_dose and patient.dose is not None) else None
    out = Patient(patient.id, ct, dose, gmap.mask_to_target(pdm),
                  {n: gmap.mask_to_target(m) for n, m in patient.structures.items()}, gmap.target_spacing)
    return out, gmap
