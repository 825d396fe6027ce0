"""What every CT-to-MR task shares: paired slices in, a synthetic MR volume out, scored as images.

A task here turns registered CT/MR pairs (`rtgen.data.sources.image_pairs`) into 2D axial slices
(`rtgen.data.transforms.image_slices`: CT windowed, MR percentile-normalised, one in-plane spacing,
centred on size x size) and predicts MR slices in [0, 1] from CT slices. Subclasses say how
(`predict_slices`): a latent diffusion sampler (`image_synthesis`) or one forward pass
(`image_regression`).

Scoring follows the DiffMa paper, on the patient's own grid (DiffMa scoring): the predicted slices are
put back (`slices_to_volume`), then prediction and reference MR are each normalised to 0-255 by
their 0.5 and 99.5 percentiles, SSIM is the mean 2D SSIM over slices and PSNR comes from the
volume MSE (`rtgen.imaging`); the same inside the body mask (the reference's own body
mask, or SynthRAD's `mask.nii.gz`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
from pydantic import Field
from tqdm.auto import tqdm

from rtgen.core.errors import ConfigError, RtgenError
from rtgen.data.sources.image_pairs import ImagePair, find_pairs, load_pair
from rtgen.data.transforms.image_slices import (
    SliceSpec,
    body_mask_mr,
    mask_to_slices,
    slices_to_volume,
    volume_to_slices,
    with_context,
    with_windows,
)
from rtgen.imaging.scores import image_scores
from rtgen.tasks.base import Task


@dataclass
class ImageDataConfig:
    train: str = ""  # split folder of registered pairs (<patient>/ct.nii.gz + mr.nii.gz)
    val: str = ""
    max_train_patients: Annotated[int, Field(ge=1)] | None = None
    max_val_patients: Annotated[int, Field(ge=1)] | None = None
    size: Annotated[int, Field(ge=16, le=1024, multiple_of=16)] = 128  # slice side in pixels (the paper: 224)
    spacing_mm: Annotated[float, Field(gt=0.05, le=20)] = 1.25  # common in-plane spacing
    ct_window: tuple[float, float] = (-1000.0, 1500.0)  # HU mapped to [0, 1]
    mr_percentiles: tuple[float, float] = (0.5, 99.5)  # per-scan MR normalisation
    flip: bool = True  # random in-plane flips of a training pair
    cache: str = ""  # folder for encoded slices (latent tasks); "" recomputes each run
    mr_fov: bool = True  # outside the MR's field of view (its exact zeros: padding, oblique wedges): no training, blank predictions
    context_slices: Annotated[int, Field(ge=0, le=4)] = 0  # CT neighbours on each side as input channels (2.5D)
    # more input channels: the CT re-windowed to each (lo, hi) HU window, e.g. [[-200, 300]] for soft tissue
    # (pixel tasks only; each window lies inside ct_window)
    ct_windows: tuple[tuple[float, float], ...] = ()
    # training items of the pixel tasks (image_regression, image_autoencoder; the latent model refuses them):
    rotate_deg: Annotated[float, Field(ge=0, le=45)] = 0.0  # random in-plane rotation within +-this
    scale: Annotated[float, Field(ge=0, le=0.5)] = 0.0  # random zoom within 1 +- this

    def __post_init__(self):
        lo, hi = self.ct_window
        if not lo < hi:
            raise ValueError(f"ct_window must be (low, high) HU with low < high, got {tuple(self.ct_window)}")
        for w in self.ct_windows:
            if not lo <= w[0] < w[1] <= hi:
                raise ValueError(f"ct_windows: each (low, high) needs low < high, both inside ct_window {tuple(self.ct_window)}"
                                 f" (the slices hold no HU outside it), got {tuple(w)}")

    @property
    def spec(self) -> SliceSpec:
        return SliceSpec(size=int(self.size), spacing_mm=float(self.spacing_mm),
                         ct_window=tuple(float(v) for v in self.ct_window),
                         mr_percentiles=tuple(float(v) for v in self.mr_percentiles))


@dataclass
class PairSlices:
    """One patient as slices: CT and (if known) MR in [0, 1], the body mask, and what puts slices back."""

    id: str
    ct: np.ndarray  # (N, S, S) float32
    mr: np.ndarray | None
    body: np.ndarray  # (N, S, S) bool
    pair: ImagePair = field(repr=False)
    fov: np.ndarray | None = field(default=None, repr=False)  # (N, S, S) bool: where the MR holds data
    ct_latent: np.ndarray | None = field(default=None, repr=False)  # latent tasks: the encoded CT, made once
    base: np.ndarray | None = field(default=None, repr=False)  # tasks refining a base: its MR slices, made once


def pair_slices(pair: ImagePair, spec: SliceSpec) -> PairSlices:
    ct = volume_to_slices(pair.ct, pair.spacing, spec, "ct")
    mr = volume_to_slices(pair.mr, pair.spacing, spec, "mr") if pair.mr is not None else None
    body = pair.body if pair.body is not None else (body_mask_mr(pair.mr) if pair.mr is not None else None)
    return PairSlices(pair.id, ct, mr, mask_to_slices(body, pair.spacing, spec) if body is not None
                      else np.ones_like(ct, bool), pair,
                      mask_to_slices(pair.fov, pair.spacing, spec) if pair.fov is not None else np.ones_like(ct, bool))


def training_slices(pairs: list[PairSlices], use_fov: bool) -> np.ndarray:
    """Which slices of `pairs` (concatenated) train a model: those with MR data in view when
    `use_fov`, else all. An MR slice it did not acquire is no target: its CT shows tissue."""
    return np.concatenate([p.fov.any(axis=(1, 2)) if use_fov else np.ones(len(p.ct), bool) for p in pairs])


def score_volume(pred01: np.ndarray, pair: ImagePair) -> dict[str, float]:
    """The image scores of a synthetic MR (any scale) against the pair's MR, on its grid (DiffMa scoring:
    per-patient 0.5/99.5 percentile normalisation, MR grid)."""
    if pair.mr is None:
        raise RtgenError(f"{pair.id}: no reference MR to score against")
    return image_scores(pred01, pair.mr, pair.body if pair.body is not None else body_mask_mr(pair.mr))


class ImageTask(Task):
    """Shared data handling, validation and prediction of the CT-to-MR tasks."""

    output_kind: ClassVar[str] = "image"  # `rtgen predict` writes <patient>.nii.gz images, not doses
    selection_metric = "ssim"
    higher_is_better = True
    metric_units = ""  # several metrics with their own units (SSIM %, PSNR dB): none printed
    item_name = "slices"
    checkpoint_sections: ClassVar[tuple[str, ...]] = ("data",)
    data: ImageDataConfig

    def implied_architecture(self) -> dict:
        # grey slices (and their re-windowed copies); latent tasks: the autoencoder's channels
        return {"in_channels": (1 + 2 * self.data.context_slices) * (1 + len(self.data.ct_windows))}

    def use_flip_average(self) -> None:
        """`rtgen predict --tta`: predict the mean over each slice's in-plane flips. Only a regression has
        it (DiffMa's base may: base.flip_average); other image tasks refuse with one error."""
        raise RtgenError(f"--tta: {self.model_name} has no flip averaging; CT -> MR regressions (image_regression) "
                         "have it")

    def refuse_data(self, names: tuple[str, ...], why: str) -> None:
        """One ConfigError naming the `data.<name>` settings in `names` that are set, for a task that
        cannot honour them (e.g. inputs only a pixel regression takes); nothing when none is set."""
        given = [f"data.{n}" for n in names if getattr(self.data, n)]
        if given:
            raise ConfigError(self.source, f"{' / '.join(given)}: {why}")

    def inputs(self, ct: np.ndarray) -> np.ndarray:
        """(N, S, S) CT slices in [0, 1] -> (N, C, S, S) network input: 2.5D context, then extra windows."""
        return with_windows(with_context(ct, self.data.context_slices), self.data.ct_window, self.data.ct_windows)

    # ---- data
    def load_split(self, folder: str, limit: int | None, what: str, progress: bool) -> list[PairSlices]:
        if not folder:
            raise RtgenError(f"{self.source}: data.{what} is not set (a folder of registered CT/MR pairs)")
        paths = find_pairs(folder)[:limit] if limit else find_pairs(folder)
        spec = self.data.spec
        return [pair_slices(load_pair(p), spec)
                for p in tqdm(paths, desc=f"{what} slices", unit="patient", disable=not progress)]

    def val_data(self, progress: bool = True) -> list[PairSlices]:
        return self.load_split(self.data.val, self.data.max_val_patients, "val", progress)

    def affine(self, image_keys: tuple[str, ...], mask_keys: tuple[str, ...]):
        """The training items' random affine (`data.rotate_deg`, `data.scale`), or None when both are 0;
        `FlippedSlices` seeds it."""
        if not (self.data.rotate_deg or self.data.scale):
            return None
        from rtgen.data.transforms.augment import slice_affine

        return slice_affine(image_keys, mask_keys, self.data.rotate_deg, self.data.scale)

    def data_summary(self, train_set, val_data) -> dict:
        return {"train_slices": len(train_set), "val_patients": len(val_data),
                "val_slices": int(sum(len(p.ct) for p in val_data))}

    # ---- prediction
    def predict_slices(self, model, ct: np.ndarray, device, batch_size: int, sampling=None,
                       autocast=None) -> np.ndarray:
        """(N, S, S) CT slices in [0, 1] -> (N, S, S) MR slices in [0, 1]."""
        raise NotImplementedError

    def predict_case(self, model, ps: PairSlices, device, batch_size: int, autocast=None) -> np.ndarray:
        """Validation's prediction of a prepared patient: a task may reuse what it prepared once."""
        return self.predict_slices(model, ps.ct, device, batch_size, None, autocast)

    def predict_pair(self, model, pair: ImagePair, device=None, batch_size: int = 32, sampling=None,
                     autocast=None) -> np.ndarray:
        """A synthetic MR in [0, 1] on the pair's CT grid (x, y, z), float32."""
        device = device or next(model.parameters()).device
        ct = volume_to_slices(pair.ct, pair.spacing, self.data.spec, "ct")
        mr = np.zeros_like(ct)
        seen = self.slices_in_view(pair, len(ct))
        if seen.any():  # slices wholly outside the MR's field of view are not synthesised at all
            mr[seen] = self.predict_slices(model, ct[seen], device, batch_size, sampling, autocast)
        return self.on_grid(mr, pair)

    def slices_in_view(self, pair: ImagePair, n: int) -> np.ndarray:
        """(N,) bool: the slices with MR data in view (all of them without an MR or with data.mr_fov off)."""
        if pair.fov is None or not self.data.mr_fov:
            return np.ones(n, bool)
        return pair.fov.any(axis=(0, 1))

    def on_grid(self, slices: np.ndarray, pair: ImagePair) -> np.ndarray:
        """Predicted slices back on the pair's grid, blank outside the MR's field of view when one is
        known (`data.mr_fov`): the output grid is the MR's, and what it did not acquire holds no image."""
        vol = slices_to_volume(slices, pair.ct.shape, pair.spacing, self.data.spec)
        return vol * pair.fov if pair.fov is not None and self.data.mr_fov else vol

    def validate(self, model, data: list[PairSlices], device, batch_size: int, autocast=None) -> tuple[dict, Any]:
        """Mean image scores over the validation patients, and one (reference, prediction) for figures."""
        rows, example = [], None
        for ps in data:
            pred = self.predict_case(model, ps, device, batch_size, autocast)
            rows.append(score_volume(self.on_grid(pred, ps.pair), ps.pair))
            if example is None:
                example = (ps, pred)
        metrics = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        return metrics, example

    def model_card_data(self) -> list[str]:
        d = self.data
        lines = [f"- Slices: {d.size} x {d.size} px at {d.spacing_mm} mm in-plane; CT window {tuple(d.ct_window)} HU "
                 f"-> [0, 1]; MR by its {tuple(d.mr_percentiles)} percentiles -> [0, 1]."]
        if d.context_slices:
            lines.append(f"- Input: each CT slice with its {d.context_slices} neighbour(s) on each side (2.5D).")
        if d.ct_windows:
            lines.append(f"- Input: the CT also re-windowed to {', '.join(f'{lo:g}..{hi:g}' for lo, hi in d.ct_windows)} HU, "
                         "one channel each.")
        if d.mr_fov:
            lines.append("- MR field of view: what an MR did not acquire (outside the convex hull of its non-zero voxels) "
                         "is left out of training; predictions leave it blank when the patient folder holds the "
                         "(registered) MR. Only where the MR holds data is read from it, never its intensities.")
        return lines

    def model_card(self, summary: dict) -> str:
        t, v = summary["training"], summary.get("validation", {})
        return "\n".join([
            f"# {summary['model']['name']}: CT -> MR synthesis ({self.name})", "",
            *self.model_card_data(),
            f"- Trained on {t.get('train_slices', '?')} slices, {t['epochs_run']} epochs, "
            f"{t['seconds'] / 60:.1f} min on {t['hardware']}.",
            f"- Validation ({t.get('val_patients', '?')} patients, scored on each MR's grid after 0.5/99.5 percentile "
            f"normalisation to 0-255): SSIM {v.get('ssim', float('nan')):.1f} %, PSNR {v.get('psnr', float('nan')):.2f} dB, "
            f"MSE {v.get('mse', float('nan')):.1f}; in the body SSIM {v.get('ssim_body', float('nan')):.1f} %, "
            f"PSNR {v.get('psnr_body', float('nan')):.2f} dB.", "",
        ])


class FlippedSlices(torch.utils.data.Dataset):
    """Training items of the image tasks: item i of every named array (N, ..., H, W), all flipped
    in-plane by the same random draw (`flip`), then through `transform` (a MONAI dictionary
    transform, e.g. `slice_affine`); boolean masks come out as float32.

    The trainer reseeds it every epoch (`set_random_state`): an item's flips come from (state, index),
    so they depend on neither the order items are drawn in nor the loader's workers, and `--resume`
    draws what an uninterrupted run would have drawn."""

    def __init__(self, arrays: dict[str, np.ndarray], flip: bool, seed: int, transform=None):
        self.arrays, self.flip, self.transform = arrays, flip, transform
        self.set_random_state(seed)

    def set_random_state(self, seed: int) -> None:
        self.state = seed
        if self.transform is not None and hasattr(self.transform, "set_random_state"):
            self.transform.set_random_state(seed)

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        items = {k: a[i] for k, a in self.arrays.items()}
        rng = np.random.default_rng([self.state, i])
        for axis in (-1, -2):
            if self.flip and rng.random() < 0.5:
                items = {k: np.flip(a, axis) for k, a in items.items()}
        items = {k: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32 if a.dtype == bool else a.dtype))
                 for k, a in items.items()}
        if self.transform is not None:
            items = {k: (v.as_tensor() if hasattr(v, "as_tensor") else torch.as_tensor(v)).contiguous()
                     for k, v in self.transform(items).items()}  # plain tensors, not MONAI's MetaTensor
        return items


def as_batches(x: np.ndarray, batch_size: int, device) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])).to(device)
            for i in range(0, len(x), batch_size)]
