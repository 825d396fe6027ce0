"""CT -> MR latent diffusion (DiffMa and its baselines): denoise MR latents given CT latents.

Slices (see `image_base`) are encoded once by a frozen autoencoder (`latent.vae`; TAEF2, shipped
in rtgen) and the diffusion runs on latents scaled to unit variance (`latent.shift`, `latent.scale`
are measured on the training MR latents at the start of a run and kept in config.json). The
network is any model with `forward(x_t, t, ct_latent)`; DiffMa's vision embedder (`model.embedder`)
is first pre-trained alone with the cross InfoNCE loss (paper eq. 7-8) for
`diffusion.embedder_pretrain_steps` steps, then frozen, as the paper does.

Prediction samples the MR latent with any of rtgen's samplers (default: the probability-flow ODE
in `diffusion.val_steps` steps), decodes it and puts the slices back on the CT's grid. The MR of
a patient is never an input: only the CT is encoded at prediction time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from tqdm.auto import tqdm

from rtgen.core.atomic import atomic_path
from rtgen.core.errors import ConfigError
from rtgen.core.registry import register_task
from rtgen.diffusion import NoiseSchedule, diffusion_loss, sample
from rtgen.tasks.image_base import FlippedSlices, ImageDataConfig, ImageTask, PairSlices, as_batches


VAE_DIR = "vae"  # where a run folder keeps its trained autoencoder


def _autoencoder_run(run: str, source: str) -> tuple[Path, Path, dict]:
    """(weights, config.json path, config) of a trained image_autoencoder run, or one clear error."""
    from rtgen.core.checkpoint import read_config, resolve_checkpoint

    if not run:
        raise ConfigError(source, "latent.vae is autoencoder_kl but latent.vae_run (a trained image_autoencoder "
                                  "run folder) is not set")
    weights, config_path = resolve_checkpoint(run)
    config = read_config(config_path)
    if config.get("task") != "image_autoencoder":
        raise ConfigError(source, f"latent.vae_run: {run} is a {config.get('task')!r} run, not an image_autoencoder one")
    return weights, config_path, config


@dataclass
class LatentConfig:
    vae: Literal["taef2", "autoencoder_kl"] = "taef2"  # frozen autoencoder: TAEF2 (rtgen/hub/taef2) or a trained one
    vae_run: str = ""  # for autoencoder_kl: an image_autoencoder run folder (rtgen train configs/diffma_vae.yaml)
    shift: float | None = None  # latent mean over training MR slices; None: measured when training starts
    scale: float | None = None  # 1 / latent std over training MR slices; None: measured likewise

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SynthDiffusionConfig:
    schedule: Literal["linear", "cosine"] = "linear"
    timesteps: Annotated[int, Field(ge=2, le=100_000)] = 1000
    prediction: Literal["epsilon", "sample", "v_prediction"] = "epsilon"
    val_sampler: Literal["ddpm", "ddim", "dpmpp", "ode"] = "ode"  # probability-flow ODE (Heun), as the paper
    val_steps: Annotated[int, Field(ge=1, le=1000)] = 10
    embedder_pretrain_steps: Annotated[int, Field(ge=0, le=1_000_000)] = 200  # InfoNCE steps before freezing
    embedder_lr: Annotated[float, Field(gt=0, le=1)] = 1e-3
    tau: Annotated[float, Field(gt=0, le=10)] = 0.07  # InfoNCE temperature
    seed: Annotated[int, Field(ge=0)] = 0  # noise of validation sampling (predictions are deterministic per seed)

    @property
    def schedule_obj(self) -> NoiseSchedule:
        return NoiseSchedule(self.schedule, self.timesteps)

    def to_dict(self) -> dict:
        return asdict(self)


@register_task("image_synthesis")
class ImageSynthesisTask(ImageTask):
    """Latent diffusion from CT slices to MR slices, scored by SSIM/PSNR on each patient's grid."""

    sections: ClassVar[dict[str, type]] = {"data": ImageDataConfig, "latent": LatentConfig,
                                           "diffusion": SynthDiffusionConfig}
    checkpoint_sections: ClassVar[tuple[str, ...]] = ("data", "latent", "diffusion")
    stochastic: ClassVar[bool] = True
    latent: LatentConfig
    diffusion: SynthDiffusionConfig

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.schedule = self.diffusion.schedule_obj
        self._vae = None

    def implied_architecture(self) -> dict:
        latent = self.settings["latent"]
        if latent.vae == "taef2":
            channels, factor = 32, 8
        else:  # read from the trained autoencoder's config, without loading its weights
            arch = _autoencoder_run(latent.vae_run, self.source)[2]["model"]["architecture"]
            channels, factor = int(arch["latent_channels"]), 2 ** (len(arch["channels"]) - 1)
        return {"in_channels": channels, "ct_channels": channels, "latent_size": self.settings["data"].size // factor}

    # ---- the autoencoder
    @property
    def vae(self):
        """The frozen codec (rtgen.models.codecs): TAEF2, or the AutoencoderKL run `latent.vae_run`."""
        if self._vae is None:
            from rtgen.models.codecs import TAEF2Codec

            self._vae = TAEF2Codec() if self.latent.vae == "taef2" else self._trained_vae()
        return self._vae

    def _trained_vae(self):
        from rtgen.models.codecs import AutoencoderKLCodec
        from rtgen.tasks import task_from_checkpoint

        weights, config_path, config = _autoencoder_run(self.latent.vae_run, self.source)
        return AutoencoderKLCodec(task_from_checkpoint(config, str(config_path)).load_model(weights))

    @torch.no_grad()
    def encode(self, slices01: np.ndarray, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """(N, S, S) in [0, 1] -> (N, C, S/f, S/f) raw latents (float32)."""
        out = []
        device = "cuda" if torch.cuda.is_available() else "cpu"  # a fixed preprocessing: wherever it is fastest
        vae = self.vae.to(device)
        for x in tqdm(as_batches(slices01, batch_size, device), desc="encoding", unit="batch", disable=not progress,
                      leave=False):
            out.append(vae.encode(x[:, None]).float().cpu().numpy())
        return np.concatenate(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """(N, C, h, w) raw latents -> (N, f h, f w) grey slices in [0, 1]."""
        vae = self.vae.to(latents.device)
        return vae.decode(latents.float())[:, 0].float().cpu().numpy()  # float: autocast may make it bf16

    def _encoded(self, pairs: list[PairSlices], what: str, progress: bool) -> tuple[np.ndarray, np.ndarray]:
        """Raw (MR, CT) latents of all slices of `pairs`, read from or written to `data.cache`."""
        vae_id = self.latent.vae
        if self.latent.vae == "autoencoder_kl":  # a retrained autoencoder must not reuse old latents
            vae_id = hashlib.sha1(_autoencoder_run(self.latent.vae_run, self.source)[0].read_bytes()).hexdigest()
        key = hashlib.sha1(json.dumps([vae_id, asdict(self.data.spec), [
            (p.id, p.ct.shape, float(p.ct.sum()), float(p.mr.sum())) for p in pairs]], default=str).encode()).hexdigest()[:16]
        path = Path(self.data.cache) / f"latents-{what}-{key}.npz" if self.data.cache else None
        if path is not None and path.is_file():
            with np.load(path, allow_pickle=False) as z:
                return z["mr"], z["ct"]
        mr = self.encode(np.concatenate([p.mr for p in pairs]), progress=progress)
        ct = self.encode(np.concatenate([p.ct for p in pairs]), progress=progress)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.savez(f, mr=mr, ct=ct)
        return mr, ct

    def _scaled(self, z: np.ndarray) -> np.ndarray:
        return ((z - self.latent.shift) * self.latent.scale).astype(np.float32)

    def train_dataset(self, seed: int, rank: int = 0, progress: bool = True) -> FlippedSlices:
        pairs = self.load_split(self.data.train, self.data.max_train_patients, "train", progress)
        mr, ct = self._encoded(pairs, "train", progress)
        if self.latent.shift is None or self.latent.scale is None:  # measured once, then kept in config.json
            self.latent.shift = float(mr.mean())
            self.latent.scale = float(1.0 / max(mr.std(), 1e-6))
        # scaled (MR, CT) latent pairs of every training slice
        return FlippedSlices({"x0": self._scaled(mr), "ct": self._scaled(ct)}, self.data.flip, seed + rank)

    # ---- training
    def prepare_model(self, model, train_set, device, pretrain: bool, progress: bool = True) -> None:
        """Pre-train DiffMa's vision embedder alone with the cross InfoNCE loss, then freeze it."""
        embedder = getattr(model, "embedder", None)
        steps = self.diffusion.embedder_pretrain_steps
        if embedder is None or steps == 0:
            return
        if pretrain:
            from rtgen.models.diffma_embedder import cross_info_nce

            opt = torch.optim.AdamW(embedder.parameters(), lr=self.diffusion.embedder_lr, weight_decay=0.0)
            gen = torch.Generator().manual_seed(self.diffusion.seed)
            ct = torch.from_numpy(train_set.arrays["ct"])
            batch = min(64, len(ct))
            embedder.train()
            for _ in tqdm(range(steps), desc="embedder (InfoNCE)", unit="step", disable=not progress, leave=False):
                idx = torch.randperm(len(ct), generator=gen)[:batch]
                loss = cross_info_nce(embedder.embed_tokens(ct[idx].to(device)), self.diffusion.tau)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        embedder.freeze()

    def loss(self, model, batch: dict) -> torch.Tensor:
        d = self.diffusion
        ct = batch["ct"]
        return diffusion_loss(lambda x_t, t: model(x_t, t, ct).float(), batch["x0"], self.schedule, d.prediction)

    # ---- checkpoints
    def write_run_files(self, run_dir: Path) -> None:
        """A trained autoencoder is copied into the run folder (`vae/`): predicting needs nothing else."""
        if self.latent.vae != "autoencoder_kl":
            return
        import shutil

        weights, config, _ = _autoencoder_run(self.latent.vae_run, self.source)
        for src in (weights, config):
            with atomic_path(Path(run_dir) / VAE_DIR / src.name) as tmp:
                shutil.copyfile(src, tmp)

    @classmethod
    def from_checkpoint(cls, config: dict, source: str = "config.json") -> "ImageSynthesisTask":
        latent = dict(config.get("latent") or {})
        beside = Path(source).parent / VAE_DIR
        if latent.get("vae") == "autoencoder_kl" and (beside / "config.json").is_file():
            latent["vae_run"] = str(beside)  # the copy made at training time, wherever the run folder moved
        return super().from_checkpoint({**config, "latent": latent}, source)

    # ---- prediction
    def val_data(self, progress: bool = True) -> list[PairSlices]:
        """The validation patients with their CT encoded once (not again every epoch)."""
        data = super().val_data(progress)
        for ps in data:
            ps.ct_latent = self._scaled(self.encode(ps.ct))
        return data

    def predict_case(self, model, ps: PairSlices, device, batch_size: int, autocast=None) -> np.ndarray:
        return self.sample_mr(model, ps.ct_latent, device, batch_size, None, autocast)

    def predict_slices(self, model, ct: np.ndarray, device, batch_size: int, sampling=None,
                       autocast=None) -> np.ndarray:
        """CT slices in [0, 1] -> sampled MR slices in [0, 1] (deterministic for a seed)."""
        return self.sample_mr(model, self._scaled(self.encode(ct, batch_size)), device, batch_size, sampling, autocast)

    @torch.no_grad()
    def sample_mr(self, model, ct_latent: np.ndarray, device, batch_size: int, sampling=None,
                  autocast=None) -> np.ndarray:
        """Scaled CT latents -> sampled MR slices in [0, 1]."""
        import contextlib

        sampler = sampling.sampler if sampling is not None else self.diffusion.val_sampler
        steps = sampling.steps if sampling is not None else self.diffusion.val_steps
        seed = sampling.seed if sampling is not None else self.diffusion.seed
        cond_all = torch.from_numpy(ct_latent)
        gen = torch.Generator().manual_seed(seed)
        was = model.training
        model.eval()
        out = []
        with autocast or contextlib.nullcontext():
            for i in range(0, len(cond_all), batch_size):
                cond = cond_all[i:i + batch_size].to(device)
                embedded = model.embedder(cond) if hasattr(model, "denoise") else None

                def denoise(x_t, t, cond=cond, embedded=embedded):
                    t = t.to(device)
                    return (model.denoise(x_t, t, embedded) if embedded is not None else model(x_t, t, cond)).float()

                z = sample(denoise, tuple(cond.shape), self.schedule, sampler, steps, self.diffusion.prediction,
                           generator=gen, device=device)
                out.append(self.decode(z.float() / self.latent.scale + self.latent.shift))
        model.train(was)
        return np.concatenate(out)

    def model_card_data(self) -> list[str]:
        d = self.diffusion
        return super().model_card_data() + [
            f"- Latents: {self.latent.vae} (frozen), scaled by ({self.latent.shift:.4f}, {self.latent.scale:.4f}) "
            "(shift, scale) measured on the training MR latents.",
            f"- Diffusion: {d.schedule} schedule, {d.timesteps} steps, {d.prediction} prediction; validation samples with "
            f"{d.val_sampler} in {d.val_steps} steps. Vision embedder pre-trained {d.embedder_pretrain_steps} steps "
            f"(cross InfoNCE, tau {d.tau}), then frozen. The global condition is a pooled CT embedding of the "
            "embedder (the paper's BioMedCLIP weights cannot be downloaded here).",
        ]
