"""Train a DiffMa config (benchmarks/diffma_gpu/NAME.yaml) for a wall-clock budget on the latents of
prep.py (env LATENTS) with rtgen's Trainer: python train_budget.py NAME SECONDS RUN_DIR [overrides].
The epoch count comes from a 25-step throughput probe, so the cosine schedule ends with the budget.
No validation during the run: score afterwards with rtgen predict and rtgen evaluate."""
import os
import sys
import time

import numpy as np
import torch

from rtgen.core.devices import autocast_for
from rtgen.core.hooks import Hook
from rtgen.engine.config import load_config
from rtgen.engine.trainer import Trainer
from rtgen.tasks.image_base import FlippedSlices

from no_validation import without_validation  # benchmarks/diffma_gpu

name, budget, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
t_start = time.time()
z = np.load(os.environ.get("LATENTS", "local/gpu/latents.npz"))
x0, ct = z["x0"].astype(np.float32), z["ct"].astype(np.float32)
over = [f"latent.shift={float(z['shift'])}", f"latent.scale={float(z['scale'])}", *sys.argv[4:]]
cfg = load_config(f"benchmarks/diffma_gpu/{name}.yaml", over)
task = cfg.task
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
bs = cfg.train.batch_size
# throughput probe: a throwaway model, 25 steps (5 warm-up), same loss and autocast as the trainer
probe = task.build_model().to(dev)
opt = torch.optim.AdamW(probe.parameters(), lr=1e-5)
batch = {"x0": torch.from_numpy(x0[:bs]).to(dev), "ct": torch.from_numpy(ct[:bs]).to(dev)}
for i in range(25):
    if i == 5:
        torch.cuda.synchronize() if dev.type == "cuda" else None
        t0 = time.perf_counter()
    with autocast_for(dev, cfg.train.amp, cfg.train.cpu_amp):
        loss = task.loss(probe, batch)
    opt.zero_grad(); loss.backward(); opt.step()
torch.cuda.synchronize() if dev.type == "cuda" else None
step_s = (time.perf_counter() - t0) / 20
del probe, opt
per_epoch = len(x0) // bs
left = budget - (time.time() - t_start) - 0.02 * budget
epochs = max(1, int(left / (per_epoch * step_s * 1.25 + 0.3)))
cfg.train.epochs = epochs
print(f"[{name}] {step_s * 1000:.1f} ms/step probe -> {epochs} epochs of {per_epoch} steps", flush=True)
task.train_dataset = lambda seed, rank=0, progress=True: FlippedSlices({"x0": x0, "ct": ct}, task.data.flip, seed + rank)


class WallClockBudget(Hook):
    """Ends the run after the epoch that passes the budget (should the probe have been optimistic)."""

    def on_epoch_end(self, trainer, row: dict) -> None:
        if time.time() - t_start > budget:
            print(f"[{name}] budget reached after epoch {trainer.epoch}", flush=True)
            trainer.stale = cfg.train.patience  # the trainer's own stop


tr = Trainer(cfg, out, progress=False, hooks=[WallClockBudget()])
# no validation data here: the EMA weights are saved once at the end, with no metrics
without_validation(tr, task)
tr.fit()
tr._save_best({"note": "not validated during training; scored afterwards with rtgen predict and rtgen evaluate"})
h = tr.history
print(f"[{name}] done: {tr.epoch} epochs, {tr.step} steps, {tr.elapsed:.0f} s, loss first {h[0]['train_loss']:.4f} "
      f"last {h[-1]['train_loss']:.4f}, {time.time() - t_start:.0f} s total", flush=True)
