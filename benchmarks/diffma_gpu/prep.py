"""The DiffMa task's scaled training latents (MR target, CT condition; the slices training keeps),
float16, in one file a GPU call can carry: python benchmarks/diffma_gpu/prep.py TRAIN [CACHE] [OUT].
The same arrays `rtgen train` builds (ImageSynthesisTask.train_dataset), read from or written to
the task's latent cache."""
import sys

import numpy as np

from rtgen.engine.config import load_config

train = sys.argv[1]
cache = sys.argv[2] if len(sys.argv) > 2 else "rtgen-out/cache/diffma"
out = sys.argv[3] if len(sys.argv) > 3 else "local/gpu/latents.npz"
task = load_config("configs/diffma_cpu.yaml", [f"data.train={train}", f"data.cache={cache}"]).task
a = task.train_dataset(0, 0, True).arrays
np.savez(out, x0=a["x0"].astype(np.float16), ct=a["ct"].astype(np.float16),
         shift=np.float64(task.latent.shift), scale=np.float64(task.latent.scale))
print(out, {k: v.shape for k, v in a.items()}, "shift", task.latent.shift, "scale", task.latent.scale)
