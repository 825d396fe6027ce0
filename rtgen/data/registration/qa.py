"""Registration quality per pair, before (the raw physical alignment) and after, and a checkerboard.

- Body Dice: CT body (HU > -300) against the MR body (thresholded), both on the MR grid and where
  the MR holds data (blank end slices and oblique-slab corners say nothing). The limb's outline is
  where repositioning shows most, and both masks are reliable on their own modality.
- Bone-edge distance (`bone_mm`): the mean in-plane distance from each rim voxel of the CT cortex
  (HU > 600 in the CT body, on the MR grid, inside the MR body) to the nearest MR intensity edge
  (`mr_edges`: in-plane peaks of the top 20% of gradient magnitudes). No MR bone segmentation is
  needed, which on T1 is unreliable (cortex, tendons, vessels and air are all voids), and the
  periosteal surface is always an MR edge (void against muscle or fat). It reads 2-5 mm, not 0,
  at the best alignment (the rim of a thick cortex is not where the MR gradient peaks, and other
  edges lie near any point), so it is a weak, relative measure, before against after: moving two
  registered real CTs by 5 and 10 mm raised it by 0-1.5 and 1-2.5 mm. None without cortex.
- MI: histogram mutual information (nats, 32 bins) of CT (clipped to -1000..1500 HU) and MR
  (clipped to its 99.5th percentile) where the MR holds data, both smoothed by 1.5 mm (see `_mi`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from rtgen.data.registration import masks as M
from rtgen.data.registration.pair import RegistrationResult, resample_onto

EDGE_TOP = 0.2
"""Fraction of the body's MR gradient magnitudes counted as edges (after in-plane peak thinning)."""
MIN_CORTEX_VOXELS = 50
CORTEX_HU = 600.0
"""Cortical bone only: cancellous bone (200-500 HU) holds fatty marrow and has no sharp MR edge."""


@dataclass(frozen=True)
class QAThresholds:
    """A pair fails QA below `min_dice` body Dice after, below `min_tumour_dice` tumour Dice after (when
    both tumour masks exist: they coincide in physical space, so registration must keep them so),
    if MI dropped, or if the rigid step was rejected."""

    min_dice: float = 0.85
    min_tumour_dice: float = 0.8
    require_mi_gain: bool = True


@dataclass
class PairQA:
    dice_before: float
    dice_after: float
    bone_mm_before: float | None
    bone_mm_after: float | None
    mi_before: float
    mi_after: float
    tumour_dice_before: float | None
    tumour_dice_after: float | None
    reasons: list[str] = field(default_factory=list)  # why it failed; empty when it passed

    @property
    def passed(self) -> bool:
        return not self.reasons

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0


def mutual_information(a: np.ndarray, b: np.ndarray, bins: int = 32) -> float:
    """Histogram MI in nats of two same-shaped arrays."""
    joint, _, _ = np.histogram2d(a.ravel(), b.ravel(), bins=bins)
    p = joint / joint.sum()
    pa, pb = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / (pa @ pb)[nz])).sum())


def mr_edges(mr: sitk.Image, mr_body: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(edges, where they were looked for): in-plane local maxima of the MR gradient magnitude (1 mm
    Gaussian) in its top `EDGE_TOP` fraction, inside the body eroded by 3 mm (no skin, no FOV border)."""
    inner = ndimage.binary_erosion(mr_body, structure=M.inplane_disc(3.0, mr.GetSpacing()))
    if not inner.any():
        return inner, inner
    grad = M.to_array(sitk.GradientMagnitude(sitk.SmoothingRecursiveGaussian(mr, 1.0)))
    peak = grad >= ndimage.maximum_filter(grad, size=(1, 3, 3))
    return inner & peak & (grad > np.quantile(grad[inner], 1.0 - EDGE_TOP)), inner


def bone_edge_distance(cortex: np.ndarray, edges: np.ndarray, region: np.ndarray, mr: sitk.Image) -> float | None:
    """Mean in-plane distance (mm) from the rim voxels of the CT cortex (a mask on the MR grid) inside
    `region` to the nearest MR edge in the same slice (module docstring); None with too little bone."""
    rim = cortex & ~ndimage.binary_erosion(cortex, structure=np.ones((1, 3, 3), bool)) & region
    keep = rim & edges.any(axis=(1, 2))[:, None, None]
    if int(keep.sum()) < MIN_CORTEX_VOXELS:
        return None
    sampling = mr.GetSpacing()[1::-1]
    dist = [ndimage.distance_transform_edt(~e, sampling=sampling)[r] for e, r in zip(edges, keep) if r.any()]
    return float(np.concatenate(dist).mean())


def _mi(ct_on_mr: np.ndarray, mr: sitk.Image, support: np.ndarray) -> float:
    """MI after a 1.5 mm Gaussian on both: the raw CT, sampled at the MR voxels without interpolation
    when the grids share corners, is sharper than any registered (interpolated) CT and would score
    higher for that alone."""
    mr_arr = M.to_array(mr)
    ct_img = M.like(np.clip(ct_on_mr, -1000, 1500).astype(np.float32), mr)
    mr_img = M.like(np.clip(mr_arr, 0, np.percentile(mr_arr, 99.5)).astype(np.float32), mr)
    smooth = [M.to_array(sitk.SmoothingRecursiveGaussian(i, 1.5)) for i in (ct_img, mr_img)]
    return mutual_information(smooth[0][support], smooth[1][support])


def assess(ct: sitk.Image, mr: sitk.Image, result: RegistrationResult, ct_tumour: sitk.Image | None = None,
           mr_tumour: sitk.Image | None = None, thresholds: QAThresholds = QAThresholds()) -> PairQA:
    """Score the raw physical alignment and the registered CT against the MR; say why it fails, if it does."""
    ident = sitk.Transform()
    ct_before = M.to_array(resample_onto(ct, mr, ident, -1000.0))
    ct_after = M.to_array(result.ct)
    body_ct = M.like(result.ct_body, ct)
    bone_ct = M.like(M.ct_bone(M.to_array(ct), CORTEX_HU) & result.ct_body, ct)  # in the body: not the couch

    def on_mr(mask: sitk.Image, tx: sitk.Transform) -> np.ndarray:
        return M.to_array(resample_onto(mask, mr, tx, nearest=True)) > 0

    support = result.mr_support
    body_before, body_after = on_mr(body_ct, ident) & support, on_mr(body_ct, result.transform) & support
    edges, region = mr_edges(mr, result.mr_body)
    tumour_before = tumour_after = None
    if ct_tumour is not None and mr_tumour is not None and result.ct_tumour is not None:
        mr_t = M.to_array(mr_tumour) > 0
        tumour_before = dice(M.to_array(resample_onto(ct_tumour, mr, ident, nearest=True)) > 0, mr_t)
        tumour_after = dice(M.to_array(result.ct_tumour) > 0, mr_t)
    qa = PairQA(
        dice_before=dice(body_before, result.mr_body), dice_after=dice(body_after, result.mr_body),
        bone_mm_before=bone_edge_distance(on_mr(bone_ct, ident), edges, region, mr),
        bone_mm_after=bone_edge_distance(on_mr(bone_ct, result.transform), edges, region, mr),
        mi_before=_mi(ct_before, mr, support), mi_after=_mi(ct_after, mr, support),
        tumour_dice_before=tumour_before, tumour_dice_after=tumour_after)
    if not result.rigid_ok:
        qa.reasons.append("rigid sanity check failed")
    if qa.dice_after < thresholds.min_dice:
        qa.reasons.append(f"body Dice {qa.dice_after:.3f} < {thresholds.min_dice}")
    if tumour_after is not None and tumour_after < thresholds.min_tumour_dice:
        qa.reasons.append(f"tumour Dice {tumour_after:.3f} < {thresholds.min_tumour_dice}")
    if thresholds.require_mi_gain and qa.mi_after < qa.mi_before:
        qa.reasons.append(f"MI fell ({qa.mi_before:.3f} -> {qa.mi_after:.3f})")
    return qa


def _tumour_slice(mr: sitk.Image, tumour: sitk.Image | None) -> int:
    if tumour is not None:
        zs = np.nonzero(M.to_array(tumour).any(axis=(1, 2)))[0]
        if zs.size:
            return round(float(zs.mean()))
    return mr.GetSize()[2] // 2


def _board(ct_slice: np.ndarray, mr_slice: np.ndarray, mr_lo: float, mr_hi: float, squares: int) -> np.ndarray:
    ct_n = np.clip((ct_slice + 160.0) / 400.0, 0, 1).astype(np.float32)  # soft-tissue window W400 L40
    mr_n = np.clip((mr_slice - mr_lo) / max(mr_hi - mr_lo, 1e-6), 0, 1).astype(np.float32)
    board = sitk.CheckerBoard(sitk.GetImageFromArray(ct_n), sitk.GetImageFromArray(mr_n), [squares, squares])
    return sitk.GetArrayFromImage(board)


def checkerboard_png(path: str | Path, ct: sitk.Image, mr: sitk.Image, result: RegistrationResult,
                     mr_tumour: sitk.Image | None = None, squares: int = 8) -> Path:
    """Two checkerboards of CT and MR on the mid-tumour axial slice, before | after, as one PNG.

    CT is windowed W400/L40, MR normalised to its 1st-99th percentiles; edges that continue across
    the squares are aligned. Written atomically."""
    from PIL import Image, ImageDraw

    from rtgen.core.atomic import atomic_path

    z = _tumour_slice(mr, mr_tumour if mr_tumour is not None else result.ct_tumour)
    mr_arr = M.to_array(mr)
    lo, hi = np.percentile(mr_arr, [1, 99])
    before = M.to_array(resample_onto(ct, mr, sitk.Transform(), -1000.0))[z]
    after = M.to_array(result.ct)[z]
    panels = [_board(s, mr_arr[z], lo, hi, squares) for s in (before, after)]
    gap = np.ones((panels[0].shape[0], 4), np.float32)
    img = Image.fromarray((np.hstack([panels[0], gap, panels[1]]) * 255).astype(np.uint8))
    sx, sy = mr.GetSpacing()[:2]
    scale = max(1.0, 384.0 / panels[0].shape[0])  # physical aspect, at least 384 pixels high
    img = img.resize((round(img.width * scale * sx / sy), round(img.height * scale)), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    draw.text((4, 2), "before", fill=255)
    draw.text((img.width // 2 + 4, 2), "after", fill=255)
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path
