"""The frozen volume autoencoder and the latent cache of DiffKT3D.

Every slot of a patient is encoded once by the frozen autoencoder of `latent.autoencoder_run` (the
posterior mean) and cached in `data.cache`, under a sub-folder named by a hash of the autoencoder's
weights; each latent channel is standardised by its training mean and spread per modality
(`latent_stats`, kept in config.json).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rtgen.core.atomic import atomic_path
from rtgen.core.checkpoint import read_config, resolve_checkpoint
from rtgen.core.errors import ConfigError, RtgenError
from rtgen.core.structures import pack_structures
from rtgen.data.records import Patient
from rtgen.data.sources import load_patient
from rtgen.data.sources.openkbp import read_dose_csv
from rtgen.data.transforms.modalities import patient_modalities
from rtgen.tasks.base import load_run


def save_arrays(path: Path, arrays: dict) -> None:
    """One .npz of the task's caches (latents, rollouts), written atomically: an interrupted run
    leaves no half-written file for the next one to read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


class LatentCache:
    """The DiffKT3D task's frozen autoencoder, its latents and their cache (a part of `DiffKT3DTask`)."""

    _autoencoder = None
    _prior_model = None

    # ---- the frozen autoencoder
    def implied_architecture(self) -> dict:
        """Latent channels from the autoencoder run (when it is here: a checkpoint loaded elsewhere
        records them in its architecture and brings its own copy of the autoencoder)."""
        source = self.autoencoder_source()
        if source is None or not source.exists():
            return {}
        return {"latent_channels": self.autoencoder_config()["model"]["architecture"]["latent_channels"]}

    def autoencoder_source(self) -> Path | None:
        """The autoencoder run in use: the run folder's own copy once a trained run is loaded, else
        `latent.autoencoder_run`."""
        run = getattr(self, "_autoencoder_run_dir", None) or self.latent.autoencoder_run
        return Path(run) if run else None

    def autoencoder_config(self) -> dict:
        """The autoencoder run's config.json (read once per source, not once per patient)."""
        path = self.autoencoder_source()
        if getattr(self, "_autoencoder_config", (None,))[0] == path:
            return self._autoencoder_config[1]
        if path is None:
            raise ConfigError(self.source, "latent.autoencoder_run is not set (a volume_autoencoder run folder)")
        config_path = resolve_checkpoint(path)[1]
        config = read_config(config_path)
        if config.get("task") != "volume_autoencoder":
            raise ConfigError(self.source, f"latent.autoencoder_run {path} is a {config.get('task')} run, not a "
                                           "volume_autoencoder one (configs/diffkt3d_autoencoder.yaml trains it)")
        self._autoencoder_config = (path, config)
        return config

    @property
    def autoencoder(self):
        """The frozen volume autoencoder (loaded once)."""
        if self._autoencoder is None:
            _, model, _ = load_run(self.autoencoder_source(), "latent.autoencoder_run", self.source)
            self._autoencoder = model.eval().requires_grad_(False)
        return self._autoencoder

    def autoencoder_key(self) -> str:
        """The latent cache's sub-folder: a hash of the autoencoder's weights (hashed once per source)."""
        path = self.autoencoder_source()
        if getattr(self, "_autoencoder_key", (None,))[0] != path:
            weights, _ = resolve_checkpoint(path)
            self._autoencoder_key = (path, hashlib.sha256(weights.read_bytes()).hexdigest()[:12])
        return self._autoencoder_key[1]

    @property
    def depth(self) -> int:
        return int(self.autoencoder_config().get("data", {}).get("depth", 96))

    # ---- latents
    @torch.no_grad()
    def encode(self, volumes: dict[str, np.ndarray], names, device="cpu") -> dict[str, np.ndarray]:
        """Scaled cropped volumes -> raw latents (posterior means), float32."""
        autoencoder = self.autoencoder.to(device)
        out = {}
        for name in names:
            x = torch.from_numpy(volumes[name].astype(np.float32))[None, None].to(device)
            out[name] = autoencoder.encode_mean(x)[0].float().cpu().numpy()
        return out

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, name: str) -> np.ndarray:
        """(n, C, d, h, w) standardised latents of slot `name` -> (n, D, H, W) volumes in [-1, 1]."""
        z = self.unstandardise(latent, name)
        autoencoder = self.autoencoder.to(z.device)
        return np.stack([autoencoder.decode(z[i:i + 1])[0, 0].float().clamp(-1, 1).cpu().numpy()
                         for i in range(len(z))])

    def _stats(self, name: str, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.latent_stats is None:
            raise RtgenError("latent statistics are not set: train first, or load a trained run")
        mean, std = (torch.tensor(v, dtype=like.dtype, device=like.device).view(-1, 1, 1, 1)
                     for v in self.latent_stats[name])
        return mean, std

    def standardise(self, z: torch.Tensor, name: str) -> torch.Tensor:
        mean, std = self._stats(name, z)
        return (z - mean) / std

    def unstandardise(self, z: torch.Tensor, name: str) -> torch.Tensor:
        mean, std = self._stats(name, z)
        return z * std + mean

    def case_latents(self, case: dict, names) -> torch.Tensor:
        """(S, C, d, h, w) standardised latents of the named slots."""
        return torch.stack([self.standardise(torch.from_numpy(case[f"z_{n}"].astype(np.float32)), n) for n in names])

    # ---- the dose prior
    def read_prior(self, folder: str, patient_id: str) -> np.ndarray | None:
        if not folder:
            return None
        path = Path(folder) / f"{patient_id}.csv"
        if not path.exists():
            raise RtgenError(f"{path}: no dose prior for {patient_id} in {folder}")
        return read_dose_csv(path)

    def prior_dose(self, patient: Patient) -> np.ndarray:
        """The dose prior of a new patient: the prediction of `prior.model`."""
        if self._prior_model is None:
            self._prior_model = load_run(self.prior.model, "prior.model", self.source)[:2]
        task, model = self._prior_model
        return task.predict_patient(model, patient)[0]

    # ---- the cache
    def cached_case(self, path: Path, prior_folder: str, device="cpu") -> dict:
        """A patient's raw latents, crop, structures and cropped dose, from the cache or computed."""
        root = Path(self.data.cache) / self.autoencoder_key()
        cache = root / f"{Path(path).name.split('.')[0]}.npz"
        prior_source = str(Path(prior_folder).resolve()) if prior_folder else self.prior.model
        if cache.exists():
            with np.load(cache) as z:
                case = {k: z[k] for k in z.files}
            if "prior" not in self.modalities or (str(case.get("prior_source", "")) == prior_source
                                                  and "prior" in case):
                return case
        patient = load_patient(path)
        prior = self.read_prior(prior_folder, patient.id) if "prior" in self.modalities else None
        if "prior" in self.modalities and prior is None:
            prior = self.prior_dose(patient)
        vols, crop = patient_modalities(patient, prior, depth=self.depth)
        latents = self.encode(vols, [m for m in self.modalities if m in vols], device)
        case = {**{f"z_{k}": v.astype(np.float16) for k, v in latents.items()},
                "crop": np.array([crop.start, crop.depth]), "id": np.array(patient.id),
                "spacing": np.array(patient.spacing), "grid": np.array(patient.grid),
                "bits": crop.take(pack_structures(patient.structures, patient.grid)),
                "mask": crop.take(patient.possible_dose_mask), "prior_source": np.array(prior_source)}
        if prior is not None:
            case["prior"] = vols["prior"].astype(np.float16)
        if patient.dose is not None:
            case["dose"] = crop.take(patient.dose).astype(np.float16)
        save_arrays(cache, case)
        return case

    def cached_cases(self, folder: str, limit, what: str, prior_folder: str, progress: bool) -> list[dict]:
        """Every patient of a split folder (at most `limit`) as a cached case."""
        paths = self.split_paths(folder, limit, what)
        return [self.cached_case(p, prior_folder) for p in tqdm(paths, desc=f"{what} latents", disable=not progress,
                                                               leave=False)]

    def measure_latent_stats(self, cases: list[dict]) -> dict[str, list[list[float]]]:
        """Per modality and channel, the mean and spread (at least 1e-3) over every training latent voxel."""
        stats = {}
        for m in self.modalities:
            z = np.stack([c[f"z_{m}"].astype(np.float32) for c in cases])
            axes = (0, 2, 3, 4)
            stats[m] = [z.mean(axes).tolist(), np.maximum(z.std(axes), 1e-3).tolist()]
        return stats


class LatentCases(torch.utils.data.Dataset):
    """Every training patient's standardised slot latents, in the model's modality order."""

    def __init__(self, cases: list[dict], task: LatentCache):
        self.cases = cases
        self.latents = [task.case_latents(c, task.modalities) for c in cases]

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> dict:
        return {"latents": self.latents[i], "index": i}
