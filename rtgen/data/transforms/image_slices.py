"""CT and MR volumes -> 2D axial slices for a 2D latent diffusion model, and predicted slices back.

Volumes are in rtgen's NIfTI voxel order (x, y, z), as `read_nifti` returns them, with z the axial
(slice) axis; slices come out as (N, H, W) = (z, x, y). Intensities go to [0, 1]: CT by a fixed
HU window (HU are absolute), MR by its own percentiles (MR has no absolute unit). The geometry is
resampling to one in-plane spacing (scans differ: 0.977 mm, 1.172 mm) around the grid centre, then
centred padding or cropping to a square; `slices_to_volume` undoes both on the original grid, so a
prediction lands where its CT slice came from. z is never resampled: each slice stays one scan slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from rtgen.core.errors import ConfigError, RtgenError

CT_BODY_HU = -500.0
"""Air is -1000 HU and fat about -100: -500 splits body from air, and from most of a carbon couch."""


@dataclass(frozen=True)
class SliceSpec:
    """How slices are cut. 1.25 mm x 128 px covers 160 mm, the largest MR field of view of the
    sarcoma data (about 150 mm); the paper's 224 px at 1.25 mm covers 280 mm."""

    size: int = 128
    spacing_mm: float = 1.25
    ct_window: tuple[float, float] = (-1000.0, 1500.0)
    mr_percentiles: tuple[float, float] = (0.5, 99.5)
    order: int = 1  # spline order of the in-plane resampling (1: linear, never overshoots [0, 1])

    def __post_init__(self):
        if not (isinstance(self.size, int) and 8 <= self.size <= 4096 and self.size % 8 == 0):
            raise ConfigError("SliceSpec", f"size must be a multiple of 8 in [8, 4096] (the autoencoder downsamples by 8), "
                                           f"got {self.size!r}")
        if not (np.isfinite(self.spacing_mm) and 0.05 <= self.spacing_mm <= 20):
            raise ConfigError("SliceSpec", f"spacing_mm must be in [0.05, 20] mm, got {self.spacing_mm!r}")
        lo, hi = self.ct_window
        if not lo < hi:
            raise ConfigError("SliceSpec", f"ct_window must be increasing, got {self.ct_window}")
        p_lo, p_hi = self.mr_percentiles
        if not 0 <= p_lo < p_hi <= 100:
            raise ConfigError("SliceSpec", f"mr_percentiles must satisfy 0 <= low < high <= 100, "
                                           f"got {self.mr_percentiles}")
        if self.order not in (0, 1, 3):
            raise ConfigError("SliceSpec", f"order must be 0, 1 or 3, got {self.order!r}")


# ---- intensities ------------------------------------------------------------------------------

def window_ct(hu: np.ndarray, lo: float = -1000.0, hi: float = 1500.0) -> np.ndarray:
    """HU clipped to [lo, hi] and mapped linearly to [0, 1], float32."""
    if not lo < hi:
        raise RtgenError(f"CT window must be increasing, got ({lo}, {hi})")
    return ((np.clip(np.asarray(hu, np.float32), lo, hi) - lo) / np.float32(hi - lo)).astype(np.float32)


def normalise_mr(mr: np.ndarray, lo_pct: float = 0.5, hi_pct: float = 99.5,
                 mask: np.ndarray | None = None) -> np.ndarray:
    """The scan's [lo_pct, hi_pct] percentiles (of the voxels in `mask` when given) -> [0, 1], clipped,
    float32. A constant scan maps to 0."""
    v = np.asarray(mr, np.float32)
    sample = v if mask is None else v[_same_grid_mask(mask, v.shape)]
    if sample.size == 0:
        raise RtgenError("MR normalisation: the mask is empty, no voxel to take percentiles from")
    lo, hi = (np.float32(q) for q in np.percentile(sample, [lo_pct, hi_pct]))
    return ((np.clip(v, lo, hi) - lo) / max(hi - lo, np.float32(1e-6))).astype(np.float32)


# ---- body masks -------------------------------------------------------------------------------

def body_mask_ct(hu: np.ndarray, threshold: float = CT_BODY_HU) -> np.ndarray:
    """Body of a CT (x, y, z): HU above `threshold`, largest component and holes filled per slice."""
    return _body_mask(np.asarray(hu) > threshold)


def body_mask_mr(mr: np.ndarray, fraction: float = 0.1, high_pct: float = 99.5) -> np.ndarray:
    """Body of an MR (x, y, z): intensity above `fraction` of the scan's `high_pct` percentile (MR has no
    absolute unit; air is near 0 and tissue a sizeable part of the top), cleaned as for CT."""
    v = np.asarray(mr, np.float32)
    return _body_mask(v > fraction * np.percentile(v, high_pct))


_SQUARE = np.ones((3, 3), bool)


def _body_mask(above: np.ndarray) -> np.ndarray:
    """Per axial slice: open with a 3 x 3 square (drops noise and lines under 3 voxels thick, such as
    a couch edge touching the skin, but keeps corners), keep the largest component, fill its holes
    (air in bowel, dark cortical bone on MR)."""
    if above.ndim != 3:
        raise RtgenError(f"body mask: expected a 3D volume (x, y, z), got shape {above.shape}")
    out = np.zeros(above.shape, bool)
    for k in range(above.shape[2]):
        s = ndimage.binary_opening(above[..., k], structure=_SQUARE)
        labels, n = ndimage.label(s)
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        out[..., k] = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    return out


def mr_field_of_view(mr: np.ndarray) -> np.ndarray:
    """Where an MR (x, y, z) holds data: the convex hull of its non-zero voxels, which lies inside
    their bounding box (so the all-zero planes that pad it from its borders are out).

    Why: an MR resampled onto a grid leaves exact zeros wherever its acquisition did not reach, which
    no acquired voxel has (MR noise keeps air above 0). In the sarcoma data 16 of the 28 MRs have
    such regions: empty slices, rows or columns from cropping to a fixed box, and wedges with
    straight edges where an oblique acquisition meets the axial grid (up to half of a volume). An MR
    synthesised there would be scored against zeros that no scanner measured, so predictions blank
    it and training leaves it out. An acquisition's field of view is convex, hence the hull: a dark
    voxel, a zero in the air or an empty plane inside the scan stays data. Only where the MR is
    exact zero everywhere outside the body would the hull follow the body, and then only its
    convex outline."""
    v = np.asarray(mr)
    if v.ndim != 3:
        raise RtgenError(f"MR field of view: expected a 3D volume (x, y, z), got shape {v.shape}")
    nonzero = v != 0
    if not nonzero.any():
        return nonzero
    inside = _bounding_box(nonzero)  # what the all-zero planes at the borders leave
    if nonzero[inside].all():  # a box of data (the common case): the hull is the box
        return inside
    return inside & _convex_hull_mask(nonzero)


def _convex_hull_mask(points: np.ndarray) -> np.ndarray:
    """The voxels (by centre) inside the convex hull of the True voxels of a 3D mask, or the mask's
    bounding box where the hull is flat (all True voxels on one plane or line)."""
    corners = []  # the first and last True voxel of every row: the hull's vertices are among them
    for z in range(points.shape[2]):
        plane = points[:, :, z]
        rows = np.flatnonzero(plane.any(axis=1))
        first = plane[rows].argmax(axis=1)
        last = plane.shape[1] - 1 - plane[rows, ::-1].argmax(axis=1)
        corners += [np.c_[rows, first, np.full(len(rows), z)], np.c_[rows, last, np.full(len(rows), z)]]
    try:
        faces = ConvexHull(np.concatenate(corners).astype(float)).equations  # (F, 4): n . x + d <= 0 inside
    except QhullError:
        return _bounding_box(points)
    # each face is a * x + b * y + c * z + d <= 0: along a row (x, z) of a slice, an interval of y.
    # Row by row keeps this O(X * Z * F), not O(X * Y * Z * F), for 512 x 512 MRs with many faces.
    a, b, c, d = faces.T
    x, y = np.arange(points.shape[0], dtype=float), np.arange(points.shape[1], dtype=float)
    up, down, flat = b > 1e-12, b < -1e-12, np.abs(b) <= 1e-12
    out = np.empty(points.shape, bool)
    for z in range(points.shape[2]):
        rest = 1e-6 - (a * x[:, None] + c * z + d)  # (X, F): b * y <= rest
        high = (rest[:, up] / b[up]).min(axis=1, initial=np.inf)
        low = (rest[:, down] / b[down]).max(axis=1, initial=-np.inf)
        row = (rest[:, flat] >= 0).all(axis=1)
        out[:, :, z] = row[:, None] & (y >= low[:, None]) & (y <= high[:, None])
    return out


def _bounding_box(mask: np.ndarray) -> np.ndarray:
    box = np.zeros(mask.shape, bool)
    box[tuple(slice(i.min(), i.max() + 1) for i in np.nonzero(mask))] = True
    return box


def _same_grid_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    m = np.asarray(mask, bool)
    if m.shape != tuple(shape):
        raise RtgenError(f"mask shape {m.shape} differs from the volume's {tuple(shape)}")
    return m


# ---- geometry ---------------------------------------------------------------------------------

def resampled_shape(shape_xy: tuple[int, int], spacing_xy: tuple[float, float],
                    target_mm: float | tuple[float, float]) -> tuple[int, int]:
    """In-plane shape after resampling to `target_mm`: the same physical extent, rounded, at least 1."""
    target = (target_mm,) * 2 if np.isscalar(target_mm) else target_mm
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape_xy, spacing_xy, target))  # type: ignore


def resample_inplane(volume: np.ndarray, spacing_xy: tuple[float, float], target_mm: float | tuple[float, float],
                     order: int = 1, out_shape_xy: tuple[int, int] | None = None) -> np.ndarray:
    """Resample the first two axes from `spacing_xy` to `target_mm` (one spacing or one per axis), grid
    centres aligned; z (and any further axis) untouched. `out_shape_xy` forces the output shape (the
    inverse passes the original shape, so the round trip lands on the original grid exactly).
    Outside the input: the nearest edge value."""
    v = np.asarray(volume, np.float32)
    if v.ndim < 2:
        raise RtgenError(f"resample_inplane: expected at least 2 axes, got shape {v.shape}")
    shape_xy = v.shape[:2]
    target = ((float(target_mm),) * 2 if np.isscalar(target_mm)
              else tuple(float(t) for t in target_mm))  # type: ignore[union-attr]
    out_xy = tuple(out_shape_xy) if out_shape_xy is not None else resampled_shape(shape_xy, spacing_xy, target)
    scale = [t / s for t, s in zip(target, spacing_xy)]  # source voxels per output voxel
    if out_xy == tuple(shape_xy) and all(abs(c - 1) < 1e-9 for c in scale):
        return v.copy()
    # output index m sits at source coordinate c_in + (m - c_out) * scale, c = (n - 1) / 2
    offset = [(n - 1) / 2 - (m - 1) / 2 * c for n, m, c in zip(shape_xy, out_xy, scale)]
    rest = v.ndim - 2
    return ndimage.affine_transform(v, np.array(scale + [1.0] * rest), offset=np.array(offset + [0.0] * rest),
                                    output_shape=tuple(out_xy) + v.shape[2:], order=order, mode="nearest")


def _offsets(shape_hw: tuple[int, ...], size: int) -> list[int]:
    """Per axis, the source index that lands on output index 0 (negative when padding)."""
    return [(n - size) // 2 if n >= size else -((size - n) // 2) for n in shape_hw]


def _paste(src: np.ndarray, out_hw: tuple[int, int], offs: list[int], fill: float) -> np.ndarray:
    """out[..., i, j] = src[..., i + offs[0], j + offs[1]] where that exists, else `fill`."""
    out = np.full(src.shape[:-2] + tuple(out_hw), fill, dtype=src.dtype)
    so, do = [], []
    for n_src, n_out, o in zip(src.shape[-2:], out_hw, offs):
        a, b = max(0, o), min(n_src, o + n_out)  # source range that lands inside the output
        so.append(slice(a, b))
        do.append(slice(a - o, b - o))
    out[(..., *do)] = src[(..., *so)]
    return out


def pad_or_crop(image: np.ndarray, size: int, fill: float = 0.0) -> np.ndarray:
    """Centre the last two axes on a size x size square: crop where larger, pad with `fill` where
    smaller (each axis on its own). With an odd difference the extra row goes after (padding) or is
    cut after (cropping)."""
    a = np.asarray(image)
    if a.ndim < 2:
        raise RtgenError(f"pad_or_crop: expected at least 2 axes, got shape {a.shape}")
    return _paste(a, (size, size), _offsets(a.shape[-2:], size), fill)


def uncrop(image: np.ndarray, shape_hw: tuple[int, int], fill: float = 0.0) -> np.ndarray:
    """Inverse of `pad_or_crop`: a size x size square (last two axes) back to `shape_hw`, padding
    removed and cropped borders filled with `fill`."""
    a = np.asarray(image)
    size = a.shape[-1]
    if a.ndim < 2 or a.shape[-2] != size:
        raise RtgenError(f"uncrop: expected square slices in the last two axes, got shape {a.shape}")
    return _paste(a, tuple(shape_hw), [-o for o in _offsets(tuple(shape_hw), size)], fill)  # type: ignore[arg-type]


def to_rgb(x: np.ndarray) -> np.ndarray:
    """(..., H, W) -> (..., 3, H, W): grey replicated to the three channels an RGB autoencoder expects."""
    a = np.asarray(x)
    return np.repeat(a[..., None, :, :], 3, axis=-3)


# ---- volumes <-> slices -----------------------------------------------------------------------

def _check_volume(volume: np.ndarray, spacing) -> tuple[np.ndarray, tuple[float, float, float]]:
    v = np.asarray(volume)
    if v.ndim != 3:
        raise RtgenError(f"expected a 3D volume (x, y, z), got shape {v.shape}")
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise RtgenError(f"voxel spacing must be three positive numbers in mm, got {spacing}")
    return v, sp  # type: ignore[return-value]


def volume_to_slices(volume: np.ndarray, spacing, spec: SliceSpec = SliceSpec(),
                     kind: Literal["ct", "mr"] = "ct", mask: np.ndarray | None = None) -> np.ndarray:
    """(x, y, z) CT in HU or MR in scanner units -> (z, size, size) float32 in [0, 1].

    CT is windowed by `spec.ct_window`, MR normalised by `spec.mr_percentiles` (inside `mask` when
    given); then resampled in-plane to `spec.spacing_mm` and centred on size x size, padding with 0
    (air)."""
    v, sp = _check_volume(volume, spacing)
    if kind == "ct":
        x = window_ct(v, *spec.ct_window)
    elif kind == "mr":
        x = normalise_mr(v, *spec.mr_percentiles, mask=mask)
    else:
        raise RtgenError(f"kind must be 'ct' or 'mr', got {kind!r}")
    x = resample_inplane(x, sp[:2], spec.spacing_mm, spec.order)
    slices = pad_or_crop(np.moveaxis(x, 2, 0), spec.size, fill=0.0)
    return np.clip(slices, 0.0, 1.0).astype(np.float32)


def with_context(slices: np.ndarray, k: int) -> np.ndarray:
    """(N, S, S) consecutive slices of one scan -> (N, 1 + 2k, S, S): each slice between its k
    neighbours on each side (channels in z order, the slice itself in the middle), the end slices
    repeated past the scan's ends. A 2D network then sees the anatomy above and below (2.5D)."""
    s = np.asarray(slices)
    if s.ndim != 3:
        raise RtgenError(f"slice context: expected (N, S, S) slices, got shape {s.shape}")
    if k == 0:
        return s[:, None]
    idx = np.clip(np.arange(len(s))[:, None] + np.arange(-k, k + 1)[None, :], 0, len(s) - 1)
    return s[idx]


def with_windows(channels: np.ndarray, base: tuple[float, float],
                 windows: tuple[tuple[float, float], ...]) -> np.ndarray:
    """(N, C, S, S) CT channels in [0, 1] under the `base` HU window -> (N, C * (1 + len(windows)), S, S):
    the channels as given, then each re-windowed to every (lo, hi) HU window of `windows`.

    Why: the base window (-1000..1500 HU) puts fat (-100 HU) and muscle (+40 HU), whose contrast is
    most of a T1 MR's, 0.06 apart; a soft-tissue window spreads them over the input range, as a
    radiologist's window does. The values are re-derived from the base channels, so no file is read twice."""
    c = np.asarray(channels, dtype=np.float32)
    if c.ndim != 4:
        raise RtgenError(f"CT windows: expected (N, C, S, S) channels, got shape {c.shape}")
    if not windows:
        return c
    b_lo, b_hi = base
    hu = c * (b_hi - b_lo) + b_lo
    extra = [np.clip((hu - lo) / (hi - lo), 0.0, 1.0) for lo, hi in windows]
    return np.concatenate([c, *extra], axis=1).astype(np.float32)


def mask_to_slices(mask: np.ndarray, spacing, spec: SliceSpec = SliceSpec()) -> np.ndarray:
    """A boolean (x, y, z) mask (the body, a tumour) cut as `volume_to_slices` cuts its image:
    (z, size, size) bool, linear resampling kept where >= 0.5."""
    m, sp = _check_volume(mask, spacing)
    x = resample_inplane(m.astype(np.float32), sp[:2], spec.spacing_mm, order=1)
    return pad_or_crop(np.moveaxis(x, 2, 0), spec.size, fill=0.0) >= 0.5


def slices_to_volume(slices: np.ndarray, original_shape: tuple[int, int, int], spacing, spec: SliceSpec = SliceSpec(),
                     fill: float = 0.0) -> np.ndarray:
    """(z, size, size) slices -> (x, y, z) float32 on the original grid: the inverse geometry of
    `volume_to_slices` (intensities stay as given, e.g. [0, 1]). Voxels that were cropped away get
    `fill`."""
    s = np.asarray(slices, np.float32)
    _, sp = _check_volume(np.empty((1, 1, 1)), spacing)
    shape = tuple(int(n) for n in original_shape)
    if len(shape) != 3 or s.ndim != 3 or s.shape[0] != shape[2] or s.shape[1:] != (spec.size, spec.size):
        raise RtgenError(f"slices of shape {s.shape} do not fit a volume of shape {shape} at size {spec.size} "
                         f"(expected ({shape[2] if len(shape) == 3 else '?'}, {spec.size}, {spec.size}))")
    mid_xy = resampled_shape(shape[:2], sp[:2], spec.spacing_mm)
    x = np.moveaxis(uncrop(s, mid_xy, fill), 0, 2)  # (x', y', z) at spec.spacing_mm
    back = resample_inplane(x, (spec.spacing_mm, spec.spacing_mm), sp[:2], spec.order, out_shape_xy=shape[:2])
    return back.astype(np.float32)
