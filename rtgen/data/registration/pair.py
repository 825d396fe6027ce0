"""Register one CT onto its MR: a constrained, checked rigid step, then a coarse B-spline.

The MR is the fixed image and the CT the moving one, so every transform here maps an MR physical
point to a CT physical point, which is what resampling the CT onto the MR grid needs.

Why constrained: a plain Mattes-MI rigid registration started from identity rotated 2 of 3 real
limb pairs out of the field of view (the MR is a small crop, and the limb fills or leaves it).
So the rigid step starts from the physical alignment refined by the tumour centroids (the tumours
coincide in physical space), rotates about the tumour, samples only the body and a margin around
its outline, compares clipped and smoothed intensities with the tumour painted in (`metric_images`),
takes small steps, and is rejected if it turned or moved implausibly far. The B-spline is coarse,
its coefficients bounded, and it is rejected if it folds."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import SimpleITK as sitk

from rtgen.core.errors import RtgenError
from rtgen.data.registration import masks as M


class RegistrationError(RtgenError):
    """A pair that cannot be registered as given (an empty body, say); the caller names the files."""


@dataclass(frozen=True)
class RegistrationSettings:
    """Knobs of `register_pair`; the defaults were tuned on the 28 ct-mr-sts limb pairs."""

    stage: Literal["rigid", "bspline"] = "bspline"
    threads: int | None = None  # None: SimpleITK's default (all cores)
    bins: int = 32  # Mattes MI histogram bins
    sampling: float = 0.25  # fraction of fixed voxels the metric samples (random, seeded)
    seed: int = 1  # sampling seed: the same input gives the same transform
    shrink: tuple[int, ...] = (4, 2, 1)
    smoothing_mm: tuple[float, ...] = (3.0, 2.0, 1.5)  # never 0: see _method
    rigid_step_mm: float = 1.0  # first step of the regular-step descent, in mm of voxel shift
    rigid_iterations: int = 100  # per level
    max_rotation_deg: float = 15.0  # sanity limits, measured from the initial transform
    max_translation_mm: float = 30.0
    bspline_spacing_mm: float = 35.0  # control-point spacing; the mesh is clamped to 1-bspline_max_intervals intervals
    bspline_max_intervals: int = 5  # 4-8 control points an axis; a finer mesh did not score better (docs/reports/2026-11-27-diffma-refiner-ablations.md)
    bspline_shrink: tuple[int, ...] = (2, 1)
    bspline_smoothing_mm: tuple[float, ...] = (2.0, 1.5)
    bspline_iterations: int = 50  # LBFGSB iterations per level
    bspline_samples: int = 30_000  # metric samples (not a fraction: each costs 64 control points, and too
    # few let the B-spline follow noise)
    bspline_bound_mm: float = 12.0  # LBFGSB bounds every coefficient: no displacement component beyond it
    max_bspline_mm: float = 25.0  # a larger B-spline displacement, or folding, falls back to the rigid
    body_margin_mm: float = 10.0  # the metric also samples this far outside the MR body: the skin is the
    # clearest feature both images share
    moving_mask: bool = False  # also mask the CT: off, as MI then improves by sliding the CT body out of view
    ct_window: tuple[float, float] = (-300.0, 400.0)  # CT clipped for the metric: 32 bins over -1000..3000 HU
    # put fat and muscle in neighbouring bins, and soft-tissue contrast is most of what a limb shares with T1
    mr_percentile: float = 99.5  # MR clipped above it for the metric (bright outliers waste bins)
    paint_tumour: bool = True  # see metric_images
    ct_default: float = -1000.0  # HU outside the CT field of view
    ct_body_hu: float = M.CT_BODY_HU
    mr_body_fraction: float = M.MR_BODY_FRACTION


@dataclass
class RegistrationResult:
    """The CT on the MR grid and how it got there. `transform` maps MR physical points to CT ones."""

    ct: sitk.Image
    ct_tumour: sitk.Image | None
    transform: sitk.Transform
    initial: sitk.Euler3DTransform
    rigid: sitk.Euler3DTransform
    bspline: sitk.BSplineTransform | None
    rotation_deg: float  # of the rigid, relative to the initial transform
    translation_mm: float  # of the rotation centre (the MR tumour centroid), relative to the initial transform
    rigid_ok: bool
    bspline_ok: bool | None  # None: no B-spline stage was run
    mr_body: np.ndarray  # MR body on the MR grid (z, y, x); the metric's mask adds a margin to it
    mr_support: np.ndarray  # where the MR holds data (masks.mr_support)
    ct_body: np.ndarray  # moving mask on the CT grid (z, y, x)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def initial_transform(ct: sitk.Image, mr: sitk.Image, ct_tumour: sitk.Image | None,
                      mr_tumour: sitk.Image | None, mr_body: np.ndarray) -> sitk.Euler3DTransform:
    """Identity in physical space (the images share a frame), shifted by the tumour-centroid difference
    when both tumours exist, rotating about the MR tumour (else the MR body centre)."""
    c_mr = M.centroid(mr_tumour) if mr_tumour is not None else None
    c_ct = M.centroid(ct_tumour) if ct_tumour is not None else None
    centre = c_mr or M.centroid(M.like(mr_body, mr)) or mr.TransformContinuousIndexToPhysicalPoint(
        [(n - 1) / 2 for n in mr.GetSize()])
    tx = sitk.Euler3DTransform()
    tx.SetCenter(centre)
    if c_mr is not None and c_ct is not None:
        tx.SetTranslation([a - b for a, b in zip(c_ct, c_mr)])
    return tx


def metric_images(ct: sitk.Image, mr: sitk.Image, settings: RegistrationSettings, ct_tumour: sitk.Image | None = None,
                  mr_tumour: sitk.Image | None = None) -> tuple[sitk.Image, sitk.Image]:
    """(fixed MR, moving CT) clipped to the intensities that carry the soft-tissue contrast, with the
    tumour painted in a value of its own on each when both masks exist (`paint_tumour`).

    Why paint: the tumours coincide in physical space and the images agree there, but on CT a
    tumour barely differs from muscle, so MI alone is free to slide it by several millimetres to
    better match skin and fat elsewhere (it did, on every real pair). A tumour in its own histogram
    bin on both images makes its overlap part of the metric, which then anchors the registration."""
    top = float(np.percentile(sitk.GetArrayViewFromImage(mr), settings.mr_percentile))
    fixed = sitk.Clamp(mr, sitk.sitkFloat32, 0.0, top)
    lo, hi = settings.ct_window
    moving = sitk.Clamp(ct, sitk.sitkFloat32, lo, hi)
    if settings.paint_tumour and ct_tumour is not None and mr_tumour is not None:
        fixed = _paint(fixed, mr_tumour, 1.3 * top)
        moving = _paint(moving, ct_tumour, hi + 0.3 * (hi - lo))
    return fixed, moving


def _paint(img: sitk.Image, mask: sitk.Image, value: float) -> sitk.Image:
    arr = sitk.GetArrayFromImage(img)
    arr[sitk.GetArrayViewFromImage(mask) > 0] = value
    return M.like(arr, img)


def _method(settings: RegistrationSettings, fixed_mask: sitk.Image, moving_mask: sitk.Image,
            shrink: tuple[int, ...], smoothing: tuple[float, ...], sampling: float) -> sitk.ImageRegistrationMethod:
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(settings.bins)
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(sampling, settings.seed)
    r.SetMetricFixedMask(fixed_mask)
    if settings.moving_mask:
        r.SetMetricMovingMask(moving_mask)
    r.SetInterpolator(sitk.sitkLinear)
    # The CT and MR grids often share spacing and voxel corners: unsmoothed, MI then peaks falsely at
    # the identity and at whole-voxel shifts (interpolation blurs every other pose), so even the finest
    # level smooths by 1.5 mm.
    r.SetShrinkFactorsPerLevel(list(shrink))
    r.SetSmoothingSigmasPerLevel(list(smoothing))
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    if settings.threads:
        r.SetNumberOfThreads(settings.threads)
    return r


def rotation_deg(tx: sitk.Euler3DTransform, ref: sitk.Euler3DTransform) -> float:
    """Angle of the rotation that takes `ref` to `tx`."""
    rel = np.array(tx.GetMatrix()).reshape(3, 3) @ np.array(ref.GetMatrix()).reshape(3, 3).T
    return math.degrees(math.acos(float(np.clip((np.trace(rel) - 1) / 2, -1.0, 1.0))))


def rigid_step(fixed: sitk.Image, moving: sitk.Image, fixed_mask: sitk.Image, moving_mask: sitk.Image,
               initial: sitk.Euler3DTransform, settings: RegistrationSettings) -> sitk.Euler3DTransform:
    """Mattes MI in the body, regular-step descent with physical-shift scales, three levels."""
    r = _method(settings, fixed_mask, moving_mask, settings.shrink, settings.smoothing_mm, settings.sampling)
    r.SetOptimizerAsRegularStepGradientDescent(learningRate=settings.rigid_step_mm, minStep=1e-3,
                                               numberOfIterations=settings.rigid_iterations,
                                               relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    r.SetOptimizerScalesFromPhysicalShift()
    tx = sitk.Euler3DTransform(initial)
    r.SetInitialTransform(tx, inPlace=True)
    r.Execute(fixed, moving)
    return tx


def bspline_mesh(img: sitk.Image, spacing_mm: float, max_intervals: int = 5) -> list[int]:
    """Mesh intervals per axis: about one per `spacing_mm` of extent, 1 to `max_intervals` (4 to 8
    control points by default)."""
    extent = [n * s for n, s in zip(img.GetSize(), img.GetSpacing())]
    return [int(np.clip(round(e / spacing_mm), 1, max_intervals)) for e in extent]


def bspline_step(fixed: sitk.Image, moving: sitk.Image, fixed_mask: sitk.Image, moving_mask: sitk.Image,
                 rigid: sitk.Transform, settings: RegistrationSettings) -> sitk.BSplineTransform:
    """A coarse B-spline over the MR extent, applied before the rigid (x -> rigid(bspline(x)))."""
    tx = sitk.BSplineTransformInitializer(fixed, bspline_mesh(fixed, settings.bspline_spacing_mm, settings.bspline_max_intervals), 3)
    fraction = min(1.0, settings.bspline_samples / float(np.prod(fixed.GetSize())))
    r = _method(settings, fixed_mask, moving_mask, settings.bspline_shrink, settings.bspline_smoothing_mm, fraction)
    # Unbounded, control points at the edge of the field of view (few samples, no counterweight) run
    # off by centimetres and fold; bounds on the coefficients (mm) keep the deformation physical.
    r.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=settings.bspline_iterations,
                           maximumNumberOfCorrections=5,
                           maximumNumberOfFunctionEvaluations=2 * settings.bspline_iterations,
                           costFunctionConvergenceFactor=1e7, lowerBound=-settings.bspline_bound_mm,
                           upperBound=settings.bspline_bound_mm)
    r.SetMovingInitialTransform(rigid)
    r.SetInitialTransform(tx, inPlace=True)
    r.Execute(fixed, moving)
    return tx


def bspline_check(tx: sitk.BSplineTransform, grid: sitk.Image) -> tuple[float, float]:
    """(largest displacement in mm, smallest Jacobian determinant) over `grid` at half resolution;
    a determinant at or below 0 means the deformation folds tissue onto itself."""
    half = sitk.Shrink(grid, [2, 2, 1])
    field = sitk.TransformToDisplacementField(tx, sitk.sitkVectorFloat64, half.GetSize(), half.GetOrigin(),
                                              half.GetSpacing(), half.GetDirection())
    disp = np.linalg.norm(sitk.GetArrayFromImage(field), axis=-1).max()
    jac = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field)).min()
    return float(disp), float(jac)


def resample_onto(img: sitk.Image, grid: sitk.Image, tx: sitk.Transform, default: float = 0.0,
                  nearest: bool = False) -> sitk.Image:
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return sitk.Resample(img, grid, tx, interp, default, img.GetPixelID())


def register_pair(ct: sitk.Image, mr: sitk.Image, ct_tumour: sitk.Image | None = None,
                  mr_tumour: sitk.Image | None = None, body: sitk.Image | None = None,
                  settings: RegistrationSettings = RegistrationSettings()) -> RegistrationResult:
    """Register `ct` onto `mr` (both 3D float images) and resample it, and its tumour, onto the MR grid.

    `body`, when given (SynthRAD's mask.nii.gz), replaces the MR body mask found by thresholding; it
    may lie on any grid of the same physical space. The rigid step falls back to its initial transform
    if it turns more than `max_rotation_deg` or moves more than `max_translation_mm`; the B-spline to
    the rigid alone if it folds or moves more than `max_bspline_mm`. Both are noted in the result."""
    start = time.perf_counter()
    mr_body = (M.to_array(resample_onto(body, mr, sitk.Transform(), nearest=True)) > 0 if body is not None
               else M.mr_body(mr, mr_tumour, settings.mr_body_fraction))
    ct_body = M.ct_body(ct, ct_tumour, settings.ct_body_hu)
    support = M.mr_support(mr)
    mr_body &= support
    fixed_mask = M.like(M.dilate_inplane(mr_body, settings.body_margin_mm, mr.GetSpacing()) & support, mr)
    moving_mask = M.like(ct_body, ct)
    notes: list[str] = []
    if not mr_body.any() or not ct_body.any():
        which = "MR" if not mr_body.any() else "CT"
        raise RegistrationError(f"the {which} body mask is empty (no tissue above the threshold)")

    fixed, moving = metric_images(ct, mr, settings, ct_tumour, mr_tumour)
    initial = initial_transform(ct, mr, ct_tumour, mr_tumour, mr_body)
    rigid = rigid_step(fixed, moving, fixed_mask, moving_mask, initial, settings)
    angle = rotation_deg(rigid, initial)
    shift = float(np.linalg.norm(np.subtract(rigid.GetTranslation(), initial.GetTranslation())))
    rigid_ok = angle <= settings.max_rotation_deg and shift <= settings.max_translation_mm
    if not rigid_ok:
        notes.append(f"rigid rejected (rotation {angle:.1f} deg, shift {shift:.1f} mm): kept the initial alignment")
        rigid = sitk.Euler3DTransform(initial)

    transform: sitk.Transform = sitk.Euler3DTransform(rigid)
    bspline, bspline_ok = None, None
    if settings.stage == "bspline" and rigid_ok:
        bspline = bspline_step(fixed, moving, fixed_mask, moving_mask, rigid, settings)
        disp, jac = bspline_check(bspline, mr)
        bspline_ok = disp <= settings.max_bspline_mm and jac > 0
        if bspline_ok:
            transform = sitk.CompositeTransform([sitk.Euler3DTransform(rigid), bspline])
        else:
            notes.append(f"B-spline rejected (displacement {disp:.1f} mm, min Jacobian {jac:.2f}): kept the rigid")
    return RegistrationResult(
        ct=resample_onto(ct, mr, transform, settings.ct_default),
        ct_tumour=resample_onto(ct_tumour, mr, transform, nearest=True) if ct_tumour is not None else None,
        transform=transform, initial=initial, rigid=rigid, bspline=bspline, rotation_deg=angle,
        translation_mm=shift, rigid_ok=rigid_ok, bspline_ok=bspline_ok, mr_body=mr_body, mr_support=support,
        ct_body=ct_body,
        seconds=time.perf_counter() - start, notes=notes)
