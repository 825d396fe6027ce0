"""Load a checkpoint and predict with it: the task rebuilt from config.json, the network from the
registry, the weights from safetensors (checked against the architecture, never unpickled).

For the dose tasks a prediction is a whole 3D dose in Gy on the patient's grid: the slices that
touch the possible dose mask, optionally averaged over flips (test-time augmentation) and, for
diffusion models, over several samples, mapped back to Gy, clamped at 0 and zeroed outside the mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rtgen.core.checkpoint import read_config, resolve_checkpoint
from rtgen.core.devices import autocast_for, resolve_device
from rtgen.core.errors import ConfigError, RtgenError
from rtgen.core.migration import migrate_config
from rtgen.data.datasets.dose_slices import PatientSlices
from rtgen.data.records import Patient
from rtgen.data.sources import load_patient
from rtgen.data.transforms.resample import MODEL_SHAPE, MODEL_SPACING, needs_resampling, to_model_grid
from rtgen.diffusion import SAMPLERS
from rtgen.hub import shipped_model_dir, shipped_models
from rtgen.tasks import Task, task_from_checkpoint
from rtgen.tasks.dose_base import SamplingConfig


@dataclass
class Predictor:
    """A loaded checkpoint: its task, network and config."""

    task: Task
    model: torch.nn.Module
    config: dict
    source: Path | None
    device: torch.device

    @property
    def features(self):
        return self.task.features

    @property
    def output_kind(self) -> str:
        """"dose" (a dose in Gy per patient) or "image" (a CT -> MR model: a synthetic MR in [0, 1])."""
        return getattr(self.task, "output_kind", "dose")

    def sampling_config(self, sampler: str | None = None, steps: int = 10, samples: int = 1, seed: int = 0,
                        best_of: int | None = None, target: str = "dose", cli: bool = False) -> SamplingConfig:
        """The sampling settings of one prediction, checked against this model before any patient is read:
        a sampler the model does not have, several samples of a deterministic model, or DiffKT3D's
        options (`best_of`, a `target` other than the dose) on another model are refused with one
        RtgenError naming the option (as `--sampler` when `cli`, else as `sampler=`).

        A sampler of None means the model's own (image models, DiffKT3D) or, for dose diffusion, dpmpp."""
        def option(name: str, value) -> str:
            return f"--{name.replace('_', '-')} {value}" if cli else f"{name}={value!r}"

        task, name = self.task, self.task.model_name
        own = getattr(task, "samplers", None)  # DiffKT3D: its flow ODE solvers, its own default
        allowed = own or SAMPLERS
        if sampler is not None and sampler not in allowed:
            raise RtgenError(f"{option('sampler', sampler)}: {name} samples with one of {', '.join(allowed)}")
        if samples > 1 and not task.stochastic:
            raise RtgenError(f"{option('samples', samples)}: {name} is deterministic; several samples need a "
                             "diffusion model")
        image = self.output_kind == "image"
        if not image and (best_of is not None or target != "dose"):
            if not hasattr(task, "impute"):
                what = option("best_of", best_of) if best_of is not None else option("target", target)
                raise RtgenError(f"{what}: {name} predicts doses only; scored candidates and other targets need "
                                 "an any-to-any model (diffkt3d)")
            if target != "dose":
                task.check_target(target)
        return SamplingConfig(sampler or (None if own or image else "dpmpp"), steps, samples, seed, best_of)

    def predict_with_uncertainty(self, patient: Patient | str | Path, batch_size: int = 32, tta: bool = False,
                                 sampling: SamplingConfig | None = None):
        """(mean dose in Gy, voxel-wise standard deviation over samples in Gy or None), on the patient's
        own grid: a patient off the model's grid (a DICOM CT at ~1 mm) is resampled onto it for the
        network and the dose resampled back (rtgen.data.transforms.resample)."""
        if not isinstance(patient, Patient):
            patient = load_patient(patient)
        spacing, shape = self.model_grid
        gmap = None
        if needs_resampling(patient, spacing, shape):
            patient, gmap = to_model_grid(patient, spacing, shape, with_dose=False)
        mean, std = self.task.predict_patient(self.model, patient, batch_size, tta, sampling, self.device,
                                              autocast_for(self.device))
        if gmap is not None:
            mean = gmap.dose_to_source(mean)
            std = gmap.dose_to_source(std) if std is not None else None
        return mean, std

    @property
    def model_grid(self) -> tuple[tuple[float, ...], tuple[int, ...]]:
        """(spacing mm, shape) the network was trained on: the checkpoint's "input_grid" if it records
        one ({"spacing_mm": [..], "shape": [..]}), else OpenKBP's (the shipped models)."""
        grid = self.config.get("input_grid") or {}
        return tuple(grid.get("spacing_mm", MODEL_SPACING)), tuple(grid.get("shape", MODEL_SHAPE))

    def predict_slices(self, ps: PatientSlices, batch_size: int = 32, tta: bool = False,
                       sampling: SamplingConfig | None = None) -> np.ndarray:
        """Already computed features -> (samples, *grid) doses in Gy (one sample for regression)."""
        return self.task.predict_volumes(self.model, ps, batch_size, self.device, sampling, tta,
                                         autocast_for(self.device))

    def predict(self, patient: Patient | str | Path, batch_size: int = 32, tta: bool = False,
                sampling: SamplingConfig | None = None) -> np.ndarray:
        return self.predict_with_uncertainty(patient, batch_size, tta, sampling)[0]


def resolve_model(name_or_path: str | Path) -> Path:
    """A model to load -> its folder or weights file: "hub:NAME" or a bare NAME of a shipped model
    (its folder, model or task name, as `rtgen models` lists them), else a run folder or weights file
    (returned as given: `load_predictor` reports a missing one)."""
    text = str(name_or_path)
    if text.startswith("hub:"):
        return shipped_model_dir(text[len("hub:"):])
    path = Path(name_or_path)
    if path.exists() or any(sep in text for sep in ("/", "\\")) or path.suffix:
        return path
    try:  # a bare name that is no file here: a shipped model
        return shipped_model_dir(text)
    except RtgenError:
        shipped = ", ".join(sorted(s.folder for s in shipped_models()))
        raise RtgenError(f"{text}: neither a run folder nor a shipped model (shipped: {shipped})") from None


def load_predictor(path: str | Path, device: str = "auto") -> Predictor:
    """Load a run directory or model.safetensors (with config.json beside it)."""
    weights_path, config_path = resolve_checkpoint(path)
    cfg = read_config(config_path)
    try:
        task = task_from_checkpoint(cfg, str(config_path))
    except ConfigError as e:
        raise RtgenError(f"{config_path}: model or task settings are invalid ({e.problem})") from None
    if weights_path.suffix != Path(task.weights_file).suffix:
        raise RtgenError(f"{weights_path}: a {task.model_name} checkpoint keeps its weights in {task.weights_file}, "
                         "so these weights belong to another model")
    try:
        model = task.load_model(weights_path)
    except ConfigError as e:
        raise ConfigError(config_path, e.problem) from None
    dev = resolve_device(device)
    if isinstance(model, torch.nn.Module):
        model = model.to(dev).eval()
    return Predictor(task, model, migrate_config(cfg, task.name), weights_path, dev)
