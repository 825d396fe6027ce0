"""Patient folders in and out: find CT/MR pairs in either layout, read them, write a registered pair.

Two layouts are read, told apart per patient folder by the file names in it:
- ct-mr-sts: `ct.nii.gz`, `mr_t1.nii.gz`, tumour masks `ct_mask.nii.gz`, `mr_t1_mask.nii.gz`;
- SynthRAD: `ct.nii.gz`, `mr.nii.gz`, body mask `mask.nii.gz`.
Every output pair has one naming, whatever its input: `ct.nii.gz` (registered, on the MR grid),
`mr.nii.gz` (the MR, copied byte for byte), `ct_mask.nii.gz` / `mr_mask.nii.gz` (tumour, when
given), `body_mask.nii.gz` (the MR body used by the metric and QA), `checkerboard.png`,
`rigid.tfm` and `transform.tfm` (MR physical point -> CT physical point; resample the CT with it)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from rtgen.core.atomic import staged_dir
from rtgen.core.errors import DataError
from rtgen.data.registration import masks as M
from rtgen.data.registration.pair import RegistrationResult, resample_onto
from rtgen.data.sources import image_pairs
from rtgen.data.sources.image_pairs import CT_NAMES, CT_TUMOUR_NAMES, MR_NAMES, MR_TUMOUR_NAMES


@dataclass(frozen=True)
class PairFiles:
    """One patient folder; `rel` is its path under the data folder (kept in the output)."""

    folder: Path
    rel: Path

    def _first(self, names: tuple[str, ...]) -> Path | None:
        return next((self.folder / n for n in names if (self.folder / n).is_file()), None)

    def _required(self, names: tuple[str, ...]) -> Path:
        path = self._first(names)
        if path is None:
            raise DataError(self.folder / names[0], "file not found: a patient folder needs ct.nii.gz and "
                                                    "mr_t1.nii.gz (or mr.nii.gz)")
        return path

    @property
    def ct(self) -> Path:
        return self._required(CT_NAMES)

    @property
    def mr(self) -> Path:
        return self._required(MR_NAMES)

    @property
    def ct_tumour(self) -> Path | None:
        return self._first(CT_TUMOUR_NAMES)

    @property
    def mr_tumour(self) -> Path | None:
        return self._first(MR_TUMOUR_NAMES)

    @property
    def body(self) -> Path | None:
        return self._first(image_pairs.BODY_NAMES[:1])  # SynthRAD's mask.nii.gz


def find_pairs(root: str | Path) -> list[PairFiles]:
    """Patient folders under `root` (`rtgen.data.sources.image_pairs.find_pairs`), with their path
    under it (kept in the output)."""
    root = Path(root)
    return [PairFiles(f, Path(root.name) if f == root else f.relative_to(root)) for f in image_pairs.find_pairs(root)]


def read_image(path: Path, mask: bool = False) -> sitk.Image:
    """A 3D scalar image as float32 (or uint8 0/1 for a mask); one clear error otherwise."""
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1][:200] if str(e).strip() else "unknown error"
        raise DataError(path, f"not a readable image ({reason})") from None
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(path, f"is a {img.GetDimension()}D image with {img.GetNumberOfComponentsPerPixel()} "
                              f"component(s) of size {img.GetSize()}; a 3D scalar volume is expected")
    if min(img.GetSize()) < 4:
        raise DataError(path, f"size {img.GetSize()} is too small to register (at least 4 voxels an axis)")
    return sitk.Cast(img > 0, sitk.sitkUInt8) if mask else sitk.Cast(img, sitk.sitkFloat32)


def _on_grid(mask: sitk.Image | None, ref: sitk.Image) -> sitk.Image | None:
    """A tumour mask moved onto its image's grid if it was saved on another (physical space is kept)."""
    if mask is None:
        return None
    same = (mask.GetSize() == ref.GetSize() and all(abs(a - b) < 1e-3 for a, b in
            zip(mask.GetOrigin() + mask.GetSpacing() + mask.GetDirection(),
                ref.GetOrigin() + ref.GetSpacing() + ref.GetDirection())))
    if same:
        mask.CopyInformation(ref)  # float rounding in headers: make the grids identical
        return mask
    return resample_onto(mask, ref, sitk.Transform(), nearest=True)


@dataclass
class LoadedPair:
    ct: sitk.Image
    mr: sitk.Image
    ct_tumour: sitk.Image | None
    mr_tumour: sitk.Image | None
    body: sitk.Image | None


def load_pair(files: PairFiles) -> LoadedPair:
    """Read a pair and its optional masks; an empty tumour mask is treated as absent."""
    ct, mr = read_image(files.ct), read_image(files.mr)
    masks = [(read_image(p, mask=True) if p is not None else None)
             for p in (files.ct_tumour, files.mr_tumour, files.body)]
    ct_t, mr_t = _on_grid(masks[0], ct), _on_grid(masks[1], mr)
    ct_t = ct_t if ct_t is not None and M.centroid(ct_t) is not None else None
    mr_t = mr_t if mr_t is not None and M.centroid(mr_t) is not None else None
    return LoadedPair(ct, mr, ct_t, mr_t, masks[2])


def write_pair(dest: Path, files: PairFiles, pair: LoadedPair, result: RegistrationResult) -> Path:
    """Write the registered pair into `dest`, all files or none (staged, then moved in)."""
    from rtgen.data.registration.qa import checkerboard_png

    with staged_dir(dest) as stage:
        sitk.WriteImage(result.ct, str(stage / "ct.nii.gz"), useCompression=True)
        if files.mr.name.endswith(".gz"):
            shutil.copyfile(files.mr, stage / "mr.nii.gz")  # the MR unchanged, header and all
        else:
            sitk.WriteImage(sitk.ReadImage(str(files.mr)), str(stage / "mr.nii.gz"), useCompression=True)
        if result.ct_tumour is not None:
            sitk.WriteImage(result.ct_tumour, str(stage / "ct_mask.nii.gz"), useCompression=True)
        if pair.mr_tumour is not None:
            sitk.WriteImage(pair.mr_tumour, str(stage / "mr_mask.nii.gz"), useCompression=True)
        sitk.WriteImage(M.like(result.mr_body, pair.mr), str(stage / "body_mask.nii.gz"), useCompression=True)
        sitk.WriteTransform(result.rigid, str(stage / "rigid.tfm"))
        sitk.WriteTransform(result.transform, str(stage / "transform.tfm"))
        checkerboard_png(stage / "checkerboard.png", pair.ct, pair.mr, result, pair.mr_tumour)
    return dest
