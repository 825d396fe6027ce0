"""DiffKT3D: Any2Any latent flow matching over planning modalities, then dose, then ScardNFT.

One task, three stages chosen by `any2any.stage`, each one `rtgen train` run:

- `any2any`: every step draws a target slot uniformly from `any2any.targets` and a set of
  conditions from the other slots, their number following a curriculum (`curriculum`);
- `dose`: the target is always the dose, every other slot a condition; `train.init` names the
  any2any run whose weights it starts from;
- `nft`: ScardNFT post-training with LoRA adapters and clinical-scorecard rewards (`nft`), from the
  dose run; the stage keeps its best epoch by the validation scorecard, the quantity it is there to raise.

Slots are `rtgen.data.transforms.modalities`: CT, PTV prescription map, OAR label map, body
(possible dose mask), an optional dose prior, and the dose. Every slot is encoded once by the frozen
volume autoencoder of `latent.autoencoder_run` and cached (`latents`).

Why a `prior` slot: the paper transfers knowledge from Wan 2.1, pretrained on videos, which cannot
be downloaded here; rtgen transfers it from its CPU dose model instead. The slot holds the
`lightgbm_dose` prediction (out-of-fold predictions of its fold boosters for the training
patients, `data.prior_train`, so the slot is as wrong in training as on new patients; at prediction
the shipped model of `prior.model` is run). A model configured without "prior" in its modalities is
the plain paper setting (the ablation).

Prediction samples the target's latent by the flow ODE, best of n by scorecard (`sampling`).

Modules: `sections` (the config sections), `latents` (autoencoder and latent cache), `curriculum`,
`nft_stage` (the nft stage's loss and rollouts), `sampling` (prediction and validation), `card` (the
model card) and `task` (the registered task that assembles them).
"""

from rtgen.tasks.diffkt3d.sections import AUTOENCODER_DIR, KT3DSamplingConfig
from rtgen.tasks.diffkt3d.task import DiffKT3DTask  # importing the package registers the task

__all__ = ["AUTOENCODER_DIR", "DiffKT3DTask", "KT3DSamplingConfig"]
