"""Train the latent autoencoder of CT -> MR diffusion on the CT and MR slices themselves.

DiffMa runs on either of two autoencoders: the pretrained TAEF2 or a MONAI `AutoencoderKL`
(`rtgen.models.autoencoder_kl`) trained here. One autoencoder encodes both the CT condition and the
MR target, as in DiffMa, so it learns from CT and MR slices pooled, with random in-plane flips.
The loss is the KL-VAE's without its GAN and perceptual terms (too slow on a CPU): L1
reconstruction plus `loss.kl_weight` x KL to N(0, I), the weight small so the latent stays sharp.

Validation reconstructs every validation MR and CT slice from the posterior mean (what diffusion
will see), puts the slices back on each patient's grid and scores them as synthetic MR is scored
(`image_base.score_volume`): `ssim`, `psnr`, ... of the MR (the selection metric is `ssim`) and
`ct_ssim`, `ct_psnr`, ... of the CT against its windowed HU. These bound what a latent diffusion
model on this autoencoder can reach. `image_synthesis` then uses the run with
`latent.autoencoder=autoencoder_kl latent.autoencoder_run=<run folder>`.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from rtgen.core.errors import RtgenError
from rtgen.core.registry import register_task
from rtgen.data.transforms.image_slices import body_mask_ct, slices_to_volume, window_ct
from rtgen.imaging.scores import image_scores
from rtgen.tasks.image_base import FlippedSlices, ImageDataConfig, ImageTask, PairSlices, as_batches, score_volume


@dataclass
class AutoencoderLossConfig:
    kl_weight: Annotated[float, Field(ge=0, le=1)] = 1e-6  # of the KL summed over latent elements, per slice

    def to_dict(self) -> dict:
        return asdict(self)


def kl_to_standard_normal(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) summed over each slice's latent, averaged over the batch."""
    var = sigma.float().pow(2)
    kl = 0.5 * (mu.float().pow(2) + var - torch.log(var.clamp(min=1e-12)) - 1)
    return kl.flatten(1).sum(1).mean()


@register_task("image_autoencoder")
class ImageAutoencoderTask(ImageTask):
    """A KL autoencoder of CT and MR slices, scored by the reconstruction's SSIM/PSNR on each grid."""

    sections: ClassVar[dict[str, type]] = {"data": ImageDataConfig, "loss": AutoencoderLossConfig}
    checkpoint_sections: ClassVar[tuple[str, ...]] = ("data",)
    stochastic: ClassVar[bool] = False
    loss_cfg: AutoencoderLossConfig

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.refuse_data(("context_slices", "ct_windows"), "the autoencoder reconstructs one grey slice at a time, "
                                                           "CT or MR alike; they are inputs of image_regression")

    def implied_architecture(self) -> dict:
        return {"in_channels": 1}  # one grey slice, CT or MR

    def train_dataset(self, seed: int, rank: int = 0, progress: bool = True) -> FlippedSlices:
        pairs = self.load_split(self.data.train, self.data.max_train_patients, "train", progress)
        mr = [p.mr for p in pairs if p.mr is not None]
        # grey slices, CT and MR alike
        return FlippedSlices({"x": np.concatenate([p.ct for p in pairs] + mr)[:, None]}, self.data.flip, seed + rank,
                             self.affine(("x",), ()))

    def loss(self, model, batch: dict) -> torch.Tensor:
        x = batch["x"]
        recon, mu, sigma = model(x)
        return (recon.float() - x).abs().mean() + self.loss_cfg.kl_weight * kl_to_standard_normal(mu, sigma)

    @torch.no_grad()
    def predict_slices(self, model, ct: np.ndarray, device, batch_size: int, sampling=None,
                       autocast=None) -> np.ndarray:
        """(N, S, S) slices in [0, 1] (CT or MR) -> their reconstructions through the posterior mean."""
        was = model.training
        model.eval()
        out = []
        with autocast or contextlib.nullcontext():
            for x in as_batches(ct, batch_size, device):
                out.append(model.decode(model.encode_mean(x[:, None])).float()[:, 0].clamp(0, 1).cpu().numpy())
        model.train(was)
        return np.concatenate(out)

    def validate(self, model, data: list[PairSlices], device, batch_size: int, autocast=None) -> tuple[dict, Any]:
        """Mean MR scores (`ssim`, `psnr`, ...) and CT scores (`ct_ssim`, ...) over the validation patients."""
        rows, example, spec = [], None, self.data.spec
        for ps in data:
            if ps.mr is None:
                raise RtgenError(f"{ps.id}: no MR to validate the autoencoder against")
            recon = {kind: self.predict_slices(model, s, device, batch_size, None, autocast)
                     for kind, s in (("mr", ps.mr), ("ct", ps.ct))}
            back = {k: slices_to_volume(r, ps.pair.ct.shape, ps.pair.spacing, spec) for k, r in recon.items()}
            body = ps.pair.body if ps.pair.body is not None else body_mask_ct(ps.pair.ct)
            ct_scores = image_scores(back["ct"], window_ct(ps.pair.ct, *spec.ct_window), body)
            rows.append({**score_volume(back["mr"], ps.pair), **{f"ct_{k}": v for k, v in ct_scores.items()}})
            if example is None:
                example = (ps, recon["mr"])
        return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}, example

    def model_card(self, summary: dict) -> str:
        t, v = summary["training"], summary.get("validation", {})
        arch, nan = summary["model"]["architecture"], float("nan")
        return "\n".join([
            f"# {summary['model']['name']}: latent autoencoder of CT and MR slices ({self.name})", "",
            *self.model_card_data()[:1],  # the slices; the rest is about synthesising an MR
            f"- Latents: {arch.get('latent_channels')} channels at 1/{2 ** (len(arch.get('channels', [])) - 1)} of the "
            f"slice side; L1 + {self.loss_cfg.kl_weight:g} x KL, no adversarial or perceptual loss.",
            f"- Trained on {t.get('train_slices', '?')} CT and MR slices, {t['epochs_run']} epochs, "
            f"{t['seconds'] / 60:.1f} min on {t['hardware']}.",
            f"- Validation reconstruction ({t.get('val_patients', '?')} patients, on each grid, 0.5/99.5 percentile "
            f"normalisation to 0-255): MR SSIM {v.get('ssim', nan):.1f} %, PSNR {v.get('psnr', nan):.2f} dB; "
            f"CT SSIM {v.get('ct_ssim', nan):.1f} %, PSNR {v.get('ct_psnr', nan):.2f} dB.",
            "- Use under diffusion: `latent.autoencoder=autoencoder_kl latent.autoencoder_run=<this run folder>`.", "",
        ])
