"""Body and bone masks from intensities alone, in NumPy with the SimpleITK geometry kept beside them.

Registration restricts its metric to the body (air and the CT couch carry no shared information,
and the MR field of view cuts the limb), and QA compares body outlines and bones, so both need
masks that work without any contour. Arrays are in SimpleITK order (z, y, x)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

CT_BODY_HU = -300.0
"""Above fat (about -100 HU) and below lung-free air-tissue blur: the skin surface on CT."""
CT_BONE_HU = 200.0
"""Bone on CT (cortical and cancellous); fatty marrow stays below it."""
MR_BODY_FRACTION = 0.2
"""MR body threshold as a fraction of the 99th percentile. Otsu splits T1 muscle from fat, not tissue
from air, when the limb fills the field of view; air and noise stay below 0.2 x p99 on every scan."""


def to_array(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(img)


def like(arr: np.ndarray, ref: sitk.Image) -> sitk.Image:
    """A SimpleITK image of `arr` on `ref`'s grid (booleans as uint8)."""
    out = sitk.GetImageFromArray(arr.astype(np.uint8) if arr.dtype == bool else arr)
    out.CopyInformation(ref)
    return out


def inplane_disc(radius_mm: float, spacing: tuple[float, ...]) -> np.ndarray:
    """An in-plane disc structuring element of `radius_mm` (slices are thick: never across z)."""
    ry, rx = (max(1, round(radius_mm / s)) for s in (spacing[1], spacing[0]))
    y, x = np.ogrid[-ry:ry + 1, -rx:rx + 1]
    disc = (y / ry) ** 2 + (x / rx) ** 2 <= 1.0
    return disc[None]


def dilate_inplane(mask: np.ndarray, radius_mm: float, spacing: tuple[float, ...]) -> np.ndarray:
    return ndimage.binary_dilation(mask, structure=inplane_disc(radius_mm, spacing)) if radius_mm > 0 else mask


def fill_slices(mask: np.ndarray) -> np.ndarray:
    """Fill holes slice by slice: in 3D a marrow cavity touching the first or last slice is no hole."""
    return np.stack([ndimage.binary_fill_holes(s) for s in mask]) if mask.any() else mask


def _pick_component(mask: np.ndarray, seed: np.ndarray | None) -> np.ndarray:
    """The component that holds most of `seed` (the tumour), else the largest: not the other leg or the couch."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    if seed is not None and (seed & mask).any():
        best = np.bincount(labels[seed & mask], minlength=n + 1)[1:].argmax() + 1
    else:
        best = np.bincount(labels.ravel(), minlength=n + 1)[1:].argmax() + 1
    return labels == best


def clean_body(raw: np.ndarray, spacing: tuple[float, ...], seed: np.ndarray | None = None) -> np.ndarray:
    """Open in-plane (cuts the couch and noise specks off the skin), keep one component, fill holes."""
    opened = ndimage.binary_opening(raw, structure=inplane_disc(2.0, spacing))
    return fill_slices(_pick_component(opened, seed))


def ct_body(ct: sitk.Image, tumour: sitk.Image | None = None, hu: float = CT_BODY_HU) -> np.ndarray:
    """CT body: HU above `hu`, the component with the tumour (or the largest), filled."""
    seed = to_array(tumour) > 0 if tumour is not None else None
    return clean_body(to_array(ct) > hu, ct.GetSpacing(), seed)


def mr_body(mr: sitk.Image, tumour: sitk.Image | None = None, fraction: float = MR_BODY_FRACTION) -> np.ndarray:
    """MR body: lightly smoothed intensity above `fraction` x p99, one component, filled."""
    smooth = to_array(sitk.SmoothingRecursiveGaussian(mr, 1.0))
    arr = to_array(mr)
    seed = to_array(tumour) > 0 if tumour is not None else None
    return clean_body(smooth > fraction * float(np.percentile(arr, 99)), mr.GetSpacing(), seed)


def mr_support(mr: sitk.Image) -> np.ndarray:
    """Where the MR holds data. Scanners leave a little noise in air, but a resampled MR is exactly 0
    outside its acquired slab: blank end slices, and corners where the slab was oblique. Outside it,
    the MR says nothing about the body, so neither the metric nor the QA may look there."""
    data = to_array(mr) != 0
    return fill_slices(ndimage.binary_closing(data, structure=inplane_disc(3.0, mr.GetSpacing())) | data)


def ct_bone(ct_arr: np.ndarray, hu: float = CT_BONE_HU) -> np.ndarray:
    return ct_arr > hu


def centroid(mask: sitk.Image) -> tuple[float, float, float] | None:
    """Physical centroid of a non-empty mask, else None."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(mask > 0, sitk.sitkUInt8))
    return stats.GetCentroid(1) if stats.HasLabel(1) else None
