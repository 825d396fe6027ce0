"""Paired CT and MR patients for image synthesis, read from NIfTI folders.

Two layouts are read, patient by patient: rtgen's registered pairs (`rtgen register` writes
`<patient>/{ct,mr}.nii.gz`), the sarcoma data as distributed (`ct.nii.gz`, `mr_t1.nii.gz`) and
SynthRAD (`<site>/<patient>/{ct,mr,mask}.nii.gz`, `mask` being the body). A split folder may hold
patients directly or one level of site folders (SynthRAD's `brain/`, `pelvis/`).

Synthesis is trained and scored voxel by voxel, so CT and MR must share one grid: a pair on two
grids (raw clinical pairs) is refused with a pointer to `rtgen register`, never silently resampled.
The MR is optional when predicting: it is never a model input.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtgen.core.errors import DataError, RtgenWarning
from rtgen.data.transforms.image_slices import mr_field_of_view
from rtgen.data.validate import check_real

CT_NAMES = ("ct.nii.gz", "ct.nii")
MR_NAMES = ("mr_t1.nii.gz", "mr.nii.gz", "mr_t1.nii", "mr.nii")
BODY_NAMES = ("mask.nii.gz", "body.nii.gz", "mask.nii")
CT_TUMOUR_NAMES = ("ct_mask.nii.gz",)
MR_TUMOUR_NAMES = ("mr_t1_mask.nii.gz", "mr_mask.nii.gz")
MAX_DEPTH = 3  # DATA/split/site/patient at most


@dataclass
class ImagePair:
    """One patient: CT in HU and, when present, the MR and a body mask, all on the CT's grid."""

    id: str
    ct: np.ndarray | None  # float32 (x, y, z), HU; None only in a scoring reference read without it (load_mr_reference)
    spacing: tuple[float, float, float]  # mm
    affine: np.ndarray  # 4 x 4, voxel -> world (written back with predictions)
    mr: np.ndarray | None = None  # float32, scanner units
    body: np.ndarray | None = None  # bool
    fov: np.ndarray | None = None  # bool: where the MR holds data (`mr_field_of_view`); None without an MR


def same_grid(shape_a, affine_a, shape_b, affine_b) -> bool:
    """Two volumes on one grid: the same shape and voxel -> world map (to 1e-3 mm: header rounding)."""
    return tuple(shape_a) == tuple(shape_b) and np.allclose(affine_a, affine_b, atol=1e-3)


def _first(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def is_patient_dir(folder: Path) -> bool:
    """A folder holding a CT or an MR file: a patient, even if half of its pair is missing (a batch
    then reports it instead of skipping it)."""
    return folder.is_dir() and any((folder / n).is_file() for n in CT_NAMES + MR_NAMES)


def find_pairs(root: str | Path) -> list[Path]:
    """Patient folders under `root` (or `root` itself if it is one), through split and site folders
    (SynthRAD's `brain/`, `pelvis/`), sorted by their path under `root`."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "folder not found" if not root.exists() else "is not a folder")
    if is_patient_dir(root):
        return [root]
    found, frontier = [], [root]
    for _ in range(MAX_DEPTH):
        deeper = []
        for folder in frontier:
            for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                (found if is_patient_dir(sub) else deeper).append(sub)
        frontier = deeper
    if not found:
        raise DataError(root, "holds no patient folders (CT/MR patients: <patient>/ct.nii.gz with mr_t1.nii.gz or mr.nii.gz)")
    return sorted(found, key=lambda p: str(p.relative_to(root)))


def holds_image_pairs(root: str | Path) -> bool:
    """Whether `root` is, or holds, CT/MR patients rather than dose patients: its first patient folder
    has a CT or MR NIfTI and no possible dose mask (an OpenKBP NIfTI patient has both). Why: `rtgen
    predict` without --model picks the shipped model of the data it is given."""
    try:
        first = find_pairs(root)[0]
    except DataError:
        return False
    return not (first / "possible_dose_mask.nii.gz").exists()


def read_volume(path: Path) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    import nibabel as nib

    from rtgen.data.sources.nifti import _quiet_nibabel

    try:
        with _quiet_nibabel():
            img = nib.load(str(path))
            arr = np.asarray(img.dataobj)
            zooms = img.header.get_zooms()
            affine = np.asarray(img.affine, np.float64)
    except Exception as e:  # nibabel, gzip and zlib raise many types for corrupt or truncated files
        raise DataError(path, f"not a readable NIfTI file ({type(e).__name__}: {e})") from None
    if arr.ndim != 3:
        raise DataError(path, f"has shape {arr.shape}; a 3D volume is expected")
    check_real(path, arr, "image")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise DataError(path, "holds NaN or infinite values")
    spacing = tuple(float(str(np.float32(z))) for z in zooms[:3])
    if not all(np.isfinite(v) and v > 0 for v in spacing):
        raise DataError(path, f"voxel spacing {spacing} mm in the header must be three positive numbers")
    return arr, spacing, affine  # type: ignore[return-value]


def load_pair(folder: str | Path, need_mr: bool = True, mr_geometry_only: bool = False) -> ImagePair:
    """One patient folder. `need_mr`: a missing MR is an error (training, scoring).
    `mr_geometry_only` (prediction: the MR is never a model input) keeps only where the MR holds
    data (`fov`) and drops its intensities."""
    folder = Path(folder)
    ct_path = _first(folder, CT_NAMES)
    if ct_path is None:
        raise DataError(folder, "no ct.nii.gz in this patient folder")
    ct, spacing, affine = read_volume(ct_path)
    if np.nanmax(ct) > 10_000 or np.nanmin(ct) < -5_000:
        raise DataError(ct_path, f"values {np.nanmin(ct):.0f} to {np.nanmax(ct):.0f} are not Hounsfield units")
    pair = ImagePair(folder.name, ct, spacing, affine)
    mr_path = _first(folder, MR_NAMES)
    if mr_path is None and need_mr:
        raise DataError(folder, "no MR (mr.nii.gz or mr_t1.nii.gz) to learn from or score against")
    if mr_path is not None:
        try:
            mr, mr_spacing, mr_affine = read_volume(mr_path)
            if not same_grid(mr.shape, mr_affine, ct.shape, affine):
                raise DataError(mr_path, f"is on another grid than {ct_path.name} ({mr.shape} vs {ct.shape}): "
                                         "register the pair first (rtgen register)")
        except DataError as e:
            if not mr_geometry_only:
                raise
            # prediction needs only the CT: an MR it cannot use costs its field of view, not the patient
            warnings.warn(f"{e}; synthesising without the MR's field of view", RtgenWarning, stacklevel=2)
        else:
            pair.fov = mr_field_of_view(mr)
            pair.mr = None if mr_geometry_only else mr
    body_path = _first(folder, BODY_NAMES)
    if body_path is not None:
        body, _, _ = read_volume(body_path)
        if body.shape != ct.shape:
            raise DataError(body_path, f"has shape {body.shape}, the CT {ct.shape}")
        pair.body = body > 0.5
    return pair


def mr_on_another_grid(folder: str | Path) -> bool:
    """Whether the patient folder holds an MR whose grid (shape, voxel -> world) is not the CT's:
    an unregistered pair. Reads the two headers only."""
    import nibabel as nib

    folder = Path(folder)
    ct_path, mr_path = _first(folder, CT_NAMES), _first(folder, MR_NAMES)
    if ct_path is None or mr_path is None:
        return False
    try:
        ct, mr = nib.load(str(ct_path)), nib.load(str(mr_path))
        return not same_grid(ct.shape, ct.affine, mr.shape, mr.affine)
    except Exception:  # unreadable: load_pair reports it, naming the file
        return False


def scored_on_mr_alone(folder: str | Path) -> bool:
    """Whether a reference folder is scored by its MR alone, on the MR's grid: its MR is on another
    grid than its CT (a raw pair, which `rtgen predict` registers), or it holds no CT at all."""
    folder = Path(folder)
    return _first(folder, CT_NAMES) is None or mr_on_another_grid(folder)


def load_mr_reference(folder: str | Path) -> ImagePair:
    """The MR of a patient folder on its own grid, to score a synthetic MR written there (`rtgen
    predict` registers a raw pair and writes on the MR's grid), also where the folder holds no CT.
    The CT is not read: `ct` is None. A body mask is used only where it lies on the MR's grid."""
    folder = Path(folder)
    mr_path = _first(folder, MR_NAMES)
    if mr_path is None:
        raise DataError(folder, "no MR (mr.nii.gz or mr_t1.nii.gz) to score against")
    mr, spacing, affine = read_volume(mr_path)
    pair = ImagePair(folder.name, None, spacing, affine, mr=mr, fov=mr_field_of_view(mr))
    body_path = _first(folder, BODY_NAMES)
    if body_path is not None:
        body, _, body_affine = read_volume(body_path)
        if same_grid(body.shape, body_affine, mr.shape, affine):
            pair.body = body > 0.5
    return pair
