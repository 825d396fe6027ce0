"""Refine a gradient-boosted dose with a small 3D network: trees for the bulk, a net for the rest.

Why: the boosted model (`dose_boosted`) predicts each voxel alone, so it misses what only a
neighbourhood shows (sharp PTV edges, OAR sparing); a 3D network trained from scratch on 2 CPU
cores learns far less than the trees. So the network (`dose_refiner_3d`) learns only the residual.

Inputs per voxel (channels, in `input_names`): the base prediction / 80 Gy, CT ((HU + 1000) / 2000),
prescription map / 70 Gy, the possible dose mask, one mask per OAR and, when the base model used
beam features, `beam_dose_proxy`. They are computed once per patient (base features, base
prediction) and kept on disk as float16 npz (`data.cache`), cropped to the possible dose mask's
bounding box plus a margin: nothing outside it is ever scored or predicted.

Training draws random patch^3 cubes inside that box (zero padded where the box is smaller), with a
left-right flip (the parotid channels swapped with it: the one symmetry head-and-neck anatomy has).
Output = base + residual. Loss = L1 inside the possible dose mask + `loss.dvh_weight` x a DVH term:
for each PTV and OAR with at least `loss.dvh_min_voxels` voxels in the patch, the mean absolute
difference between the sorted predicted and sorted reference doses of its voxels. That is the
1-Wasserstein distance between the two dose distributions, i.e. the area between the two
cumulative DVH curves: zero when the DVHs agree, differentiable through the sort, and it rewards
getting D99/D1 right at PTV edges even where the voxel-wise error cannot shrink.

Validation and prediction tile the cropped volume with `monai.inferers.sliding_window_inference`
(patch^3 windows, Gaussian blending); the dose is clamped at 0 Gy and zero outside the mask.

A run folder is self-contained: the base booster is copied beside the refiner's weights
(`base_model.txt`) and config.json keeps what rebuilds it (`base_model`: its task, model and
voxel-feature settings, and its validation scores for comparison).

Caveat (stacking): the base model predicts its own training patients, where it is a little better
than on new ones, so the refiner sees slightly smaller residuals in training than at test time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
from pydantic import Field
from tqdm.auto import tqdm

from rtgen.core.atomic import atomic_path
from rtgen.core.checkpoint import check_and_load, load_weights, read_config
from rtgen.core.errors import ConfigError, RtgenError
from rtgen.core.registry import register_task
from rtgen.core.structures import OARS, STRUCTURES, TARGETS, pack_structures  # bit k of a label volume: STRUCTURES[k]
from rtgen.data.records import Patient
from rtgen.data.sources import load_patient
from rtgen.data.transforms.voxel_features import feature_names, feature_volumes
from rtgen.dosimetry import OpenKBPScores
from rtgen.tasks.base import Task
from rtgen.tasks.dose_boosted import BoostedDoseTask

DOSE_SCALE_GY = 80.0  # doses enter and leave the network as Gy / 80
RX_SCALE_GY = 70.0
BASE_FILE = "base_model.txt"  # the base booster, copied into the refiner's run folder
CACHE_VERSION = 1  # bump when what a cached case holds changes
LR_AXIS = 1  # patient array axis that runs left-right on OpenKBP grids (parotid centroids differ along it)


@dataclass
class RefineBaseConfig:
    run: str = ""  # a fitted dose_boosted run folder (config.json + model.txt)
    beams: bool | None = None  # a beam_dose_proxy input channel; None: if the base model used beam features


@dataclass
class RefineDataConfig:
    train: str = ""  # split folder of labelled patients
    val: str = ""
    max_train_patients: Annotated[int, Field(ge=1)] | None = None
    max_val_patients: Annotated[int, Field(ge=1)] | None = None
    cache: str = ""  # folder for per-patient inputs and base predictions; "" keeps nothing between runs
    patch: Annotated[int, Field(ge=16, le=256)] = 64  # cube side for training and for tiled inference
    patches_per_patient: Annotated[int, Field(ge=1, le=10_000)] = 4  # per epoch
    overlap: Annotated[float, Field(ge=0, lt=1)] = 0.25  # between inference tiles
    margin: Annotated[int, Field(ge=0, le=64)] = 8  # voxels of context kept around the possible dose mask
    flip: bool = True  # left-right flips (parotid channels swapped) as augmentation
    target_fraction: Annotated[float, Field(ge=0, le=1)] = 0.0  # share of patches centred on a PTV voxel
    feature_workers: Annotated[int, Field(ge=1, le=256)] = 2  # processes computing inputs at start-up


@dataclass
class RefineLossConfig:
    dvh_weight: Annotated[float, Field(ge=0, le=1000)] = 0.5  # x the sorted-dose (DVH) term; 0 = L1 alone
    dvh_min_voxels: Annotated[int, Field(ge=1, le=1_000_000)] = 32  # structures with fewer voxels in a patch skip it


# ---------------------------------------------------------------- inputs


def input_names(beams: bool) -> list[str]:
    names = ["base_dose", "ct", "rx", "possible_dose_mask", *(f"{o}_mask" for o in OARS)]
    return names + ["beam_dose_proxy"] if beams else names


PDM_CHANNEL = 3
_SWAP_LR = (input_names(False).index("RightParotid_mask"), input_names(False).index("LeftParotid_mask"))


def crop_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of `mask` grown by `margin` voxels (clamped to the grid); the whole grid if empty."""
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    idx = np.argwhere(mask)
    lo, hi = np.maximum(idx.min(0) - margin, 0), np.minimum(idx.max(0) + 1 + margin, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def base_prediction(booster, patient: Patient, volumes: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    """The base model's dose (Gy) on the grid from already computed feature volumes."""
    pdm = patient.possible_dose_mask
    dose = np.zeros(patient.grid, np.float32)
    if pdm.any():
        X = np.stack([volumes[n][pdm] for n in names], axis=1)
        dose[pdm] = np.clip(booster.predict(X), 0.0, None)
    return dose


def prepare_case(patient: Patient, booster, voxels, beams: bool, margin: int) -> dict[str, np.ndarray]:
    """One patient's refiner inputs, cropped: `inputs` (C, d, h, w) float16, `labels` uint16 (bit k:
    STRUCTURES[k]), `dose` float16 (Gy / 80; absent without a reference), `origin` and `grid`.
    `voxels` are the base model's feature settings; `beams` adds the beam_dose_proxy channel (its
    features are computed even if the base model does not use them)."""
    volumes = feature_volumes(patient, dataclasses.replace(voxels, beams=voxels.beams or beams))
    base = base_prediction(booster, patient, volumes, feature_names(voxels))
    box = crop_box(patient.possible_dose_mask, margin)
    chans = [base / DOSE_SCALE_GY, (volumes["ct_hu"] + 1000.0) / 2000.0, volumes["rx_gy"] / RX_SCALE_GY,
             patient.possible_dose_mask.astype(np.float32), *(volumes[f"{o}_mask"] for o in OARS)]
    if beams:
        chans.append(np.nan_to_num(volumes["beam_dose_proxy"]))
    labels = pack_structures(patient.structures, patient.grid)
    case = {"inputs": np.stack([c[box] for c in chans]).astype(np.float16), "labels": labels[box],
            "origin": np.array([s.start for s in box], np.int64), "grid": np.array(patient.grid, np.int64)}
    if patient.dose is not None:
        case["dose"] = (patient.dose[box] / DOSE_SCALE_GY).astype(np.float16)
    return case


def paste(case: dict, crop: np.ndarray) -> np.ndarray:
    """A volume on a case's crop -> the patient's whole grid (zero outside the crop)."""
    dose = np.zeros(tuple(case["grid"]), np.float32)
    dose[tuple(slice(int(o), int(o) + n) for o, n in zip(case["origin"], crop.shape))] = crop
    return dose


_WORKER: dict[str, Any] = {}


def _init_worker(base_config: dict, base_text: str, threads: int) -> None:
    """Each start-up process rebuilds the base booster once (not once a patient)."""
    torch.set_num_threads(1)
    task = BoostedDoseTask.from_checkpoint({**base_config, "model": {
        **base_config["model"], "architecture": {**base_config["model"]["architecture"], "threads": threads}}})
    _WORKER.update(task=task, booster=task.build_model().load_text(base_text, BASE_FILE))


def _cached_case(args) -> dict[str, np.ndarray]:
    path, cache_dir, beams, margin = args
    path = Path(path)
    cache = None
    if cache_dir:
        stat = path.stat()
        key = hashlib.sha1(f"{path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}|{beams}|{margin}".encode()).hexdigest()[:16]
        cache = Path(cache_dir) / f"{path.name.removesuffix('.npz')}-{key}.npz"
        if cache.is_file():
            try:
                with np.load(cache, allow_pickle=False) as z:
                    return {k: z[k] for k in z.files}
            except Exception:  # noqa: BLE001 - a damaged cache is only recomputed
                pass
    task = _WORKER["task"]
    case = prepare_case(load_patient(path), _WORKER["booster"], task.voxels, beams, margin)
    if cache is not None:
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, **case)
    return case


# ---------------------------------------------------------------- training data


TARGET_BITS = sum(1 << k for k, name in enumerate(STRUCTURES) if name in TARGETS)


def draw_patch(case: dict, patch: int, rng: np.random.Generator, flip: bool,
               target_fraction: float = 0.0) -> dict[str, torch.Tensor]:
    """A random patch^3 cube inside the case's crop (zero padded where the crop is smaller). With
    probability `target_fraction` the cube is centred (as far as the crop allows) on a random PTV
    voxel: the DVH error sits at PTV edges, which uniform cubes visit rarely in a large crop."""
    inputs, dose, labels = case["inputs"], case["dose"], case["labels"]
    shape = inputs.shape[1:]
    centre = None
    if target_fraction and rng.random() < target_fraction:
        inside = np.flatnonzero(labels & TARGET_BITS)
        if inside.size:
            centre = np.unravel_index(int(inside[rng.integers(inside.size)]), shape)
    src, dst = [], []
    for axis, n in enumerate(shape):
        if n >= patch:
            if centre is None:
                a = int(rng.integers(0, n - patch + 1))
            else:
                a = int(np.clip(centre[axis] - patch // 2 + rng.integers(-patch // 4, patch // 4 + 1), 0, n - patch))
            src.append(slice(a, a + patch))
            dst.append(slice(0, patch))
        else:
            a = int(rng.integers(0, patch - n + 1))
            src.append(slice(0, n))
            dst.append(slice(a, a + n))
    x = np.zeros((inputs.shape[0], patch, patch, patch), np.float32)
    y = np.zeros((1, patch, patch, patch), np.float32)
    lab = np.zeros((patch, patch, patch), np.int32)
    x[(slice(None), *dst)] = inputs[(slice(None), *src)]
    y[(0, *dst)] = dose[tuple(src)]
    lab[tuple(dst)] = labels[tuple(src)]
    if flip and rng.random() < 0.5:
        x, y, lab = np.flip(x, 1 + LR_AXIS), np.flip(y, 1 + LR_AXIS), np.flip(lab, LR_AXIS)
        x = x[swap_lr_channels(x.shape[0])]
    return {"x": torch.from_numpy(np.ascontiguousarray(x)), "dose": torch.from_numpy(np.ascontiguousarray(y)),
            "labels": torch.from_numpy(np.ascontiguousarray(lab))}


def swap_lr_channels(n: int) -> list[int]:
    order = list(range(n))
    r, l = _SWAP_LR
    order[r], order[l] = l, r
    return order


class PatchDataset(torch.utils.data.Dataset):
    """`patches_per_patient` random patches of every training patient per epoch.

    The trainer reseeds it every epoch (`set_random_state`), and each item derives its own generator
    from (state, index), so the draws depend on neither the loader's workers nor a resume."""

    def __init__(self, cases: list[dict], patch: int, per_patient: int, flip: bool, seed: int,
                 target_fraction: float = 0.0):
        self.cases, self.patch, self.per_patient, self.flip = cases, patch, per_patient, flip
        self.target_fraction = target_fraction
        self.state = seed

    def set_random_state(self, seed: int) -> None:
        self.state = seed

    def __len__(self) -> int:
        return len(self.cases) * self.per_patient

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return draw_patch(self.cases[i % len(self.cases)], self.patch, np.random.default_rng([self.state, i]), self.flip,
                          self.target_fraction)


# ---------------------------------------------------------------- losses


def masked_l1(pred: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((pred - ref).abs() * mask).sum() / mask.sum().clamp(min=1.0)


def dvh_loss(pred: torch.Tensor, ref: torch.Tensor, labels: torch.Tensor, min_voxels: int = 32) -> torch.Tensor:
    """Mean over (patch, structure) of the 1-Wasserstein distance between predicted and reference
    doses in the structure: mean |sort(pred[s]) - sort(ref[s])|, the area between the two cumulative
    DVHs (per unit volume). pred, ref (B, 1, *S); labels (B, *S) integer bit sets (bit k:
    STRUCTURES[k]). Structures with fewer than `min_voxels` voxels in a patch are skipped; with none
    present it is 0 (still attached to the graph)."""
    terms = []
    for b in range(pred.shape[0]):
        p, r, lab = pred[b, 0].reshape(-1), ref[b, 0].reshape(-1), labels[b].reshape(-1)
        for k in range(len(STRUCTURES)):
            inside = (lab >> k) & 1 == 1
            if int(inside.sum()) >= min_voxels:
                terms.append((torch.sort(p[inside]).values - torch.sort(r[inside]).values).abs().mean())
    return torch.stack(terms).mean() if terms else pred.sum() * 0.0


# ---------------------------------------------------------------- the model as predicted with


class RefinedDose(torch.nn.Module):
    """What `load_model` returns: the refiner (a network) and the base booster (not a network)."""

    def __init__(self, refiner: torch.nn.Module, base):
        super().__init__()
        self.refiner, self.base = refiner, base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.refiner(x)


@register_task("dose_refine")
class DoseRefineTask(Task):
    """A 3D network refining a gradient-boosted dose, on patches, judged by the OpenKBP scores."""

    sections: ClassVar[dict[str, type]] = {"base": RefineBaseConfig, "data": RefineDataConfig,
                                           "loss": RefineLossConfig}
    checkpoint_sections: ClassVar[tuple[str, ...]] = ()  # config.json keeps `base_model` and `tiling` instead
    selection_metric = "dose_score"
    metric_units = "Gy"
    item_name = "patches"
    stochastic: ClassVar[bool] = False
    base: RefineBaseConfig
    data: RefineDataConfig
    loss_cfg: RefineLossConfig

    def __init__(self, model_name: str, arch: dict, settings: dict[str, Any], source: str = "config",
                 base_config: dict | None = None):
        self._base_config = base_config  # from a checkpoint; else read from base.run when first needed
        super().__init__(model_name, arch, settings, source)
        if self.data.patch % self.architecture.divisor:
            raise ConfigError(source, f"data.patch ({self.data.patch}) must be a multiple of "
                                      f"{self.architecture.divisor} for {len(self.architecture.channels)} levels")

    # ---- the base model
    @property
    def base_config(self) -> dict:
        """The base run's task, model and feature settings (and its validation scores)."""
        if self._base_config is None:
            run = self._base_run()
            cfg = read_config(run / "config.json")
            if cfg.get("task") != BoostedDoseTask.name:
                raise ConfigError(self.source, f"base.run: {run} is a {cfg.get('task')!r} run, not a dose_boosted one")
            self._base_config = {k: cfg[k] for k in ("task", "model", "voxels") if k in cfg}
            self._base_config["validation"] = cfg.get("validation", {})
        return self._base_config

    def _base_run(self) -> Path:
        if not self.base.run:
            raise ConfigError(self.source, "base.run is not set (a fitted dose_boosted run folder)")
        run = Path(self.base.run)
        if not (run / "config.json").is_file() or not (run / BoostedDoseTask.weights_file).is_file():
            raise ConfigError(self.source, f"base.run: {run} is not a fitted dose_boosted run "
                                           f"(needs config.json and {BoostedDoseTask.weights_file})")
        return run

    def base_task(self) -> BoostedDoseTask:
        return BoostedDoseTask.from_checkpoint(self.base_config, "base_model")

    @property
    def beams(self) -> bool:
        """Whether the inputs include beam_dose_proxy: base.beams, else as the base model."""
        if self.base.beams is not None:
            return self.base.beams
        return bool(self.base_config.get("voxels", {}).get("beams", True))

    def implied_architecture(self) -> dict:
        return {"in_channels": len(input_names(self.beams))}

    # ---- data
    def _cache_dir(self) -> str:
        """data.cache/<base model hash>: inputs of one base model never serve another."""
        if not self.data.cache:
            return ""
        text = (self._base_run() / BoostedDoseTask.weights_file).read_bytes()
        key = hashlib.sha1(text + json.dumps([CACHE_VERSION], sort_keys=True).encode()).hexdigest()[:12]
        return str(Path(self.data.cache) / f"refine-{key}")

    def _cases(self, paths: list[Path], desc: str, progress: bool) -> list[dict]:
        text = (self._base_run() / BoostedDoseTask.weights_file).read_text()
        workers = min(self.data.feature_workers, len(paths))
        cache = self._cache_dir()
        jobs = [(str(p), cache, self.beams, self.data.margin) for p in paths]
        with ProcessPoolExecutor(workers, initializer=_init_worker,
                                 initargs=(self.base_config, text, 1 if workers > 1 else 0)) as pool:
            cases = list(tqdm(pool.map(_cached_case, jobs), total=len(jobs), desc=desc, unit="patient",
                              disable=not progress))
        for case, path in zip(cases, paths):
            if "dose" not in case:
                raise RtgenError(f"{path}: patient has no dose to learn from or score against")
        return cases

    def train_dataset(self, seed: int, rank: int = 0, progress: bool = True) -> PatchDataset:
        paths = self.split_paths(self.data.train, self.data.max_train_patients, "train")
        cases = self._cases(paths, "train inputs", progress)
        self.train_patients = len(cases)
        return PatchDataset(cases, self.data.patch, self.data.patches_per_patient, self.data.flip, seed + rank,
                            self.data.target_fraction)

    def val_data(self, progress: bool = True) -> list[tuple[dict, Patient]]:
        paths = self.split_paths(self.data.val, self.data.max_val_patients, "val")
        cases = self._cases(paths, "validation inputs", progress)
        return list(zip(cases, (load_patient(p, load_ct=False) for p in paths)))

    def data_summary(self, train_set, val_data) -> dict:
        return {"train_patients": len(train_set.cases), "patches_per_epoch": len(train_set),
                "val_patients": len(val_data)}

    # ---- loss
    def loss(self, model, batch: dict) -> torch.Tensor:
        x, ref = batch["x"], batch["dose"]
        mask = x[:, PDM_CHANNEL:PDM_CHANNEL + 1]
        pred = x[:, :1] + model(x).float()
        total = masked_l1(pred, ref, mask)
        if self.loss_cfg.dvh_weight:
            total = total + self.loss_cfg.dvh_weight * dvh_loss(pred, ref, batch["labels"], self.loss_cfg.dvh_min_voxels)
        return total

    # ---- prediction
    def refine(self, model, case: dict, device, batch_size: int = 2, tta: bool = False, autocast=None) -> np.ndarray:
        """A prepared case -> the refined dose in Gy on the patient's grid (>= 0, zero outside the mask)."""
        from monai.inferers import sliding_window_inference

        x = torch.from_numpy(case["inputs"].astype(np.float32))[None].to(device)
        p = self.data.patch
        views = [(False, x)]
        if tta:
            views.append((True, x.flip(2 + LR_AXIS)[:, swap_lr_channels(x.shape[1])]))
        was = model.training
        model.eval()
        acc = 0.0
        with torch.no_grad(), autocast or contextlib.nullcontext():
            for flipped, xi in views:
                res = sliding_window_inference(xi, (p, p, p), max(1, min(batch_size, 4)), model,
                                               overlap=self.data.overlap, mode="gaussian").float()
                acc = acc + (res.flip(2 + LR_AXIS) if flipped else res)
        model.train(was)
        refined = (x[0, 0] + acc[0, 0] / len(views)).cpu().numpy() * DOSE_SCALE_GY
        return paste(case, np.clip(refined, 0.0, None) * case["inputs"][PDM_CHANNEL].astype(np.float32))

    def predict_patient(self, model, patient: Patient, batch_size: int = 32, tta: bool = False, sampling=None,
                        device=None, autocast=None) -> tuple[np.ndarray, None]:
        """Base prediction, then the refiner tiled over it: the dose in Gy on the patient's grid."""
        device = device or next(model.refiner.parameters()).device
        case = prepare_case(patient, model.base, self.base_task().voxels, self.beams, self.data.margin)
        return self.refine(model.refiner, case, device, batch_size, tta, autocast), None

    def validate(self, model, data, device, batch_size: int, autocast=None) -> tuple[dict, list]:
        """OpenKBP scores of the refined doses, and of the base doses alone for comparison."""
        scores, base_scores, volumes = OpenKBPScores(), OpenKBPScores(), []
        for case, ref in data:
            vol = self.refine(model, case, device, batch_size, autocast=autocast)
            scores.add(ref.id, ref.dose, vol, ref.possible_dose_mask, ref.structures, ref.voxel_volume_mm3)
            base_scores.add(ref.id, ref.dose, paste(case, case["inputs"][0].astype(np.float32) * DOSE_SCALE_GY),
                            ref.possible_dose_mask, ref.structures, ref.voxel_volume_mm3)
            if not volumes:
                volumes.append((ref, vol))
        return {"dose_score": scores.dose_score, "dvh_score": scores.dvh_score,
                "base_dose_score": base_scores.dose_score, "base_dvh_score": base_scores.dvh_score}, volumes

    # ---- checkpoints
    def checkpoint_config(self) -> dict:
        return {"task": self.name, "base_model": {**self.base_config, "file": BASE_FILE},
                "tiling": {"patch": self.data.patch, "overlap": self.data.overlap, "margin": self.data.margin},
                "inputs": {"beams": self.beams, "names": input_names(self.beams)},
                "normalisation": {"dose_scale_gy": DOSE_SCALE_GY, "rx_scale_gy": RX_SCALE_GY,
                                  "ct": "(HU + 1000) / 2000"}}

    @classmethod
    def from_checkpoint(cls, config: dict, source: str = "config.json") -> DoseRefineTask:
        base = config.get("base_model")
        if not isinstance(base, dict) or not isinstance(base.get("model"), dict):
            raise ConfigError(source, "base_model is missing (the boosted model this refiner refines)")
        tiling = config.get("tiling") or {}
        data = {k: tiling[k] for k in ("patch", "overlap", "margin") if k in tiling}
        model = config["model"]
        beams = (config.get("inputs") or {}).get("beams")
        return cls(model["name"], dict(model.get("architecture", {})), {"data": data, "base": {"beams": beams}}, source,
                   base_config={k: v for k, v in base.items() if k != "file"})

    def write_run_files(self, run_dir: Path) -> None:
        """Copy the base booster into the run folder, so `rtgen predict --model RUN` needs nothing else."""
        dest = Path(run_dir) / BASE_FILE
        src = self._base_run() / BoostedDoseTask.weights_file
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)

    def load_model(self, weights) -> RefinedDose:
        """The refiner (safetensors, checked against the architecture) and the base booster beside it."""
        refiner = self.build_model()
        check_and_load(refiner, load_weights(weights), weights)
        base_path = Path(weights).parent / BASE_FILE
        try:
            text = base_path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise RtgenError(f"{base_path}: the base model of this refiner cannot be read ({e})") from None
        base = self.base_task()
        return RefinedDose(refiner, base.build_model().load_text(text, str(base_path)))

    def model_card(self, summary: dict) -> str:
        t, v = summary["training"], summary.get("validation", {})
        b = self.base_config.get("validation", {})
        arch = summary["model"]["architecture"]
        return "\n".join([
            f"# {summary['model']['name']}: 3D refiner of a gradient-boosted dose", "",
            f"A residual 3D UNet (MONAI, channels {arch['channels']}) corrects the dose of the base model "
            f"`{self.base_config['model']['name']}` (copied here as `{BASE_FILE}`).",
            f"Inputs: {', '.join(input_names(self.beams))}.", "",
            "## Training",
            f"- {t.get('train_patients', '?')} patients, {t.get('patches_per_epoch', '?')} random "
            f"{self.data.patch}^3 patches an epoch, {t['epochs_run']} epochs, {t['seconds'] / 60:.1f} min on {t['hardware']}.",
            f"- Loss: L1 in the possible dose mask + {self.loss_cfg.dvh_weight:g} x sorted-dose (DVH) distance per structure.",
            "", "## Validation scores (OpenKBP definitions)",
            f"- Refined: dose {v.get('dose_score', float('nan')):.3f} Gy, DVH {v.get('dvh_score', float('nan')):.3f} Gy"
            f" on {t.get('val_patients', '?')} patients.",
            f"- Base alone: dose {b.get('dose_score', float('nan')):.3f} Gy, DVH {b.get('dvh_score', float('nan')):.3f} Gy"
            " (as recorded by the base run).", "",
        ])
