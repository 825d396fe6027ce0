"""Train DiffKT3D's latent autoencoder: one 3D KL autoencoder shared by every planning modality.

The paper diffuses in the frozen Wan 2.1 video VAE, which cannot be downloaded here; rtgen trains
a 3D MONAI `AutoencoderKL` on OpenKBP instead. One autoencoder encodes every
slot (CT, prescription map, OAR label map, body mask, dose; `rtgen.data.transforms.modalities`)
because (1) the DiT then sees one latent space, as with the paper's shared Wan VAE, so a
velocity learned for one slot transfers to another, (2) on a CPU a single small network trained
on five times the data beats five that each see one modality. The dose prior slot is a dose and
needs no training of its own. Dose is drawn more often than the rest (`data.dose_fraction`): its
reconstruction bounds every dose the diffusion model can produce.

Training draws random `crop`^3 cubes of one modality (centred inside the possible dose mask's slab)
with a left-right flip; loss L1 + `loss.kl_weight` x KL, no GAN or perceptual term (CPU budget).
Validation encodes and decodes each validation patient's whole cropped volume through the
posterior mean (what diffusion sees) and reports per modality what matters for it: the OpenKBP
dose and DVH scores of decode(encode(dose)) (`dose_score`, the selection metric: the floor of
DiffKT3D's dose error), the CT MAE in HU inside the body, and the voxel agreement of the
prescription map, the OAR labels and the body mask after decoding.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
from pydantic import Field
from tqdm.auto import tqdm

from rtgen.core.registry import register_task
from rtgen.data.records import Patient
from rtgen.data.sources import load_patient
from rtgen.data.transforms.modalities import decode_modality, patient_modalities
from rtgen.dosimetry import OpenKBPScores
from rtgen.tasks.base import Task
from rtgen.tasks.image_autoencoder import AutoencoderLossConfig, kl_to_standard_normal

TRAINED_MODALITIES = ("ct", "ptv", "oar", "body", "dose")
LR_AXIS = 1  # OpenKBP arrays: (anterior-posterior, left-right, axial); the flip is left-right


@dataclass
class VolumeDataConfig:
    train: str = ""  # split folder of OpenKBP patients (pt_* CSV folders, .npz caches or NIfTI folders)
    val: str = ""
    max_train_patients: Annotated[int, Field(ge=1)] | None = None
    max_val_patients: Annotated[int, Field(ge=1)] | None = None
    depth: Annotated[int, Field(ge=8, le=1024)] = 96  # voxels kept on the first axis around the mask
    crop: Annotated[int, Field(ge=8, le=512)] = 64  # training cube side
    crops_per_patient: Annotated[int, Field(ge=1)] = 4  # per epoch
    dose_fraction: Annotated[float, Field(ge=0, le=1)] = 0.4  # share of cubes drawn from the dose
    flip: bool = True
    val_all_modalities: Annotated[int, Field(ge=0)] = 8  # patients whose non-dose slots are also scored

    def to_dict(self) -> dict:
        return asdict(self)


def load_modalities(paths, depth: int, progress: bool, desc: str, keep_patient: bool) -> list[dict]:
    """Each patient's scaled slots (float16 to halve the memory), with its record for scoring if
    `keep_patient` (30 MB a patient: validation only)."""
    cases = []
    for path in tqdm(paths, desc=desc, disable=not progress, leave=False):
        patient = load_patient(path)
        vols, crop = patient_modalities(patient, depth=depth)
        cases.append({"volumes": {k: v.astype(np.float16) for k, v in vols.items()}, "crop": crop,
                      **({"patient": patient} if keep_patient else {})})
    return cases


class CubeDataset(torch.utils.data.Dataset):
    """`crops_per_patient` random cubes of every training patient per epoch, one modality each."""

    def __init__(self, cases: list[dict], data: VolumeDataConfig, seed: int):
        self.cases, self.data = cases, data
        self.state = seed  # the trainer reseeds it every epoch (set_random_state)

    def set_random_state(self, seed: int) -> None:
        self.state = seed

    def __len__(self) -> int:
        return len(self.cases) * self.data.crops_per_patient

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.state, i])
        vols = self.cases[i % len(self.cases)]["volumes"]
        others = [m for m in TRAINED_MODALITIES if m in vols and m != "dose"]
        name = "dose" if ("dose" in vols and rng.random() < self.data.dose_fraction) else others[rng.integers(len(others))]
        body = vols["body"] > 0
        inside = np.argwhere(body[::4, ::4, ::4]) * 4
        c, vol = self.data.crop, vols[name]
        centre = inside[rng.integers(len(inside))] if len(inside) else np.array(vol.shape) // 2
        start = [int(np.clip(ci - c // 2, 0, max(n - c, 0))) for ci, n in zip(centre, vol.shape)]
        cube = np.full((c, c, c), -1.0, np.float32)
        src = vol[tuple(slice(s, s + c) for s in start)]
        cube[tuple(slice(0, n) for n in src.shape)] = src
        if self.data.flip and rng.random() < 0.5:
            cube = np.flip(cube, LR_AXIS)
        return {"x": torch.from_numpy(np.ascontiguousarray(cube))[None]}


@torch.no_grad()
def reconstruct(model, volume: np.ndarray, device, autocast=None) -> np.ndarray:
    """A whole cropped volume through encode (posterior mean) and decode, padded to the network's factor."""
    f = model.factor
    pad = [(0, (-n) % f) for n in volume.shape]
    x = torch.from_numpy(np.pad(volume.astype(np.float32), pad, constant_values=-1.0))[None, None].to(device)
    with autocast or contextlib.nullcontext():
        y = model.decode(model.encode_mean(x)).float()[0, 0].clamp(-1, 1).cpu().numpy()
    return y[tuple(slice(0, n) for n in volume.shape)]


@register_task("volume_autoencoder")
class VolumeAutoencoderTask(Task):
    """A 3D KL autoencoder of the planning modalities, scored by what its reconstructions lose."""

    sections: ClassVar[dict[str, type]] = {"data": VolumeDataConfig, "loss": AutoencoderLossConfig}
    checkpoint_sections: ClassVar[tuple[str, ...]] = ("data",)
    selection_metric = "dose_score"
    metric_units = "Gy"
    item_name = "cubes"
    data: VolumeDataConfig
    loss_cfg: AutoencoderLossConfig

    def implied_architecture(self) -> dict:
        return {"spatial_dims": 3, "in_channels": 1}

    def metric_unit(self, name: str) -> str:
        name = name.removeprefix("val_")
        return "HU" if name == "ct_mae_hu" else "" if name.endswith("agreement") else "Gy"

    def train_dataset(self, seed: int, rank: int = 0, progress: bool = True) -> CubeDataset:
        paths = self.split_paths(self.data.train, self.data.max_train_patients, "train")
        return CubeDataset(load_modalities(paths, self.data.depth, progress, "train modalities", False), self.data, seed + rank)

    def val_data(self, progress: bool = True) -> list[dict]:
        paths = self.split_paths(self.data.val, self.data.max_val_patients, "val")
        return load_modalities(paths, self.data.depth, progress, "validation modalities", True)

    def data_summary(self, train_set, val_data) -> dict:
        return {"train_patients": len(train_set.cases), "train_cubes": len(train_set), "val_patients": len(val_data)}

    def loss(self, model, batch: dict) -> torch.Tensor:
        x = batch["x"]
        recon, mu, sigma = model(x)
        return (recon.float() - x).abs().mean() + self.loss_cfg.kl_weight * kl_to_standard_normal(mu, sigma)

    def validate(self, model, data: list[dict], device, batch_size: int, autocast=None) -> tuple[dict, Any]:
        was = model.training
        model.eval()
        scores, rows, example = OpenKBPScores(), [], None
        for i, case in enumerate(data):
            patient: Patient = case["patient"]
            vols, crop = case["volumes"], case["crop"]
            if "dose" in vols:
                gy = crop.put(decode_modality("dose", reconstruct(model, vols["dose"], device, autocast)), patient.grid)
                gy *= patient.possible_dose_mask
                scores.add(patient.id, patient.dose, gy, patient.possible_dose_mask, patient.structures,
                           patient.voxel_volume_mm3)
                example = example or (patient, gy)
            if i < self.data.val_all_modalities:
                rows.append(modality_errors(model, vols, device, autocast))
        model.train(was)
        metrics = {"dose_score": scores.dose_score, "dvh_score": scores.dvh_score}
        for key in (rows[0] if rows else {}):
            metrics[key] = float(np.nanmean([r[key] for r in rows]))
        return metrics, example

    def model_card(self, summary: dict) -> str:
        t, v = summary["training"], summary.get("validation", {})
        arch, nan = summary["model"]["architecture"], float("nan")
        return "\n".join([
            f"# {summary['model']['name']}: DiffKT3D's volume autoencoder ({self.name})", "",
            f"- One 3D KL autoencoder for every slot (CT, PTV map, OAR labels, body, dose); latents "
            f"{arch.get('latent_channels')} channels at 1/{2 ** (len(arch.get('channels', [])) - 1)} of each side.",
            f"- Trained on {t.get('train_patients', '?')} patients' random {self.data.crop}^3 cubes, "
            f"{t['epochs_run']} epochs, {t['seconds'] / 60:.1f} min on {t['hardware']}.",
            f"- Validation ({t.get('val_patients', '?')} patients), decode(encode(dose)): OpenKBP dose score "
            f"{v.get('dose_score', nan):.3f} Gy, DVH score {v.get('dvh_score', nan):.3f} Gy; CT MAE in the body "
            f"{v.get('ct_mae_hu', nan):.1f} HU; PTV map agreement {v.get('ptv_agreement', nan):.4f}, OAR labels "
            f"{v.get('oar_agreement', nan):.4f}, body {v.get('body_agreement', nan):.4f}.", "",
        ])


def modality_errors(model, vols: dict[str, np.ndarray], device, autocast=None) -> dict[str, float]:
    """What the round trip loses in each non-dose slot, in that slot's own terms."""
    body = vols["body"] > 0
    out = {}
    if "ct" in vols:
        ct = decode_modality("ct", reconstruct(model, vols["ct"], device, autocast))
        out["ct_mae_hu"] = float(np.abs(ct - decode_modality("ct", vols["ct"].astype(np.float32)))[body].mean())
    for name in ("ptv", "oar", "body"):
        rec = decode_modality(name, reconstruct(model, vols[name], device, autocast))
        ref = decode_modality(name, vols[name].astype(np.float32))
        interesting = (ref > 0) | (rec > 0)  # the structure voxels, not the empty background
        out[f"{name}_agreement"] = float((rec == ref)[interesting].mean()) if interesting.any() else float("nan")
    return out
