"""One seed of a CT -> MR image-regression recipe on a GPU, keeping the weights of its later epochs,
for a seed study scored elsewhere (the GPU call carries no validation pairs: the 64 MiB a call takes
holds the training pairs only).

    python benchmarks/diffma_gpu/unet_seeds.py CONFIG SEED FIRST_EPOCH OUT_FILE [overrides]

Trains CONFIG (with its overrides and train.seed=SEED) as `rtgen train` would, without validation,
and writes the weights after each epoch from FIRST_EPOCH on, in float16, to one safetensors file
(`e<epoch>.<name>` keys) and the run's config.json beside it. `unet_seeds_unpack.py` turns the
file back into one run folder per epoch, which `rtgen evaluate` / `benchmarks/diffma_sampling.py`
score. Why: the best-epoch selection of the recipe needs the validation scores of every epoch, and
the seed-to-seed spread of the recipe is what the README's #13 section is deciding on.
"""
import shutil
import sys
import time
from pathlib import Path

import torch

from rtgen.core.checkpoint import save_weights
from rtgen.core.hooks import Hook
from rtgen.engine.config import load_config
from rtgen.engine.trainer import Trainer

from no_validation import without_validation  # benchmarks/diffma_gpu

config, seed, first, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
t_start = time.time()
cfg = load_config(config, [*sys.argv[5:], f"train.seed={seed}"])
run = Path(f"/tmp/unet_seeds/s{seed}")


class KeepEpochs(Hook):
    def __init__(self):
        self.kept: dict[str, torch.Tensor] = {}

    def on_epoch_end(self, trainer, row: dict) -> None:
        print(f"[seed {seed}] epoch {trainer.epoch} loss {row['train_loss']:.5f} {time.time() - t_start:.0f} s", flush=True)
        if trainer.epoch >= first:
            for k, v in trainer.eval_model().state_dict().items():
                self.kept[f"e{trainer.epoch}.{k}"] = (v.half() if v.is_floating_point() else v.clone()).detach().cpu()


keep = KeepEpochs()
tr = Trainer(cfg, run, progress=False, hooks=[keep])
without_validation(tr, cfg.task)
tr.fit()
tr._save_best({"note": "no validation during the run: every kept epoch is scored afterwards"})
save_weights(out, keep.kept)
shutil.copy(run / "config.json", out.with_suffix(".json"))
print(f"[seed {seed}] done in {time.time() - t_start:.0f} s on {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}")
