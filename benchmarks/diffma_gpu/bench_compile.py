"""Does torch.compile remove DiffMa-B's kernel-launch cost on a GPU? One training step (loss, backward,
AdamW; batch 32, bf16 autocast, the chunked scan) eager, then with the network compiled by
torch.compile in its default mode and in "reduce-overhead" (CUDA graphs): warm-up (compile) time and
ms per step. python bench_compile.py [STEPS] (env LATENTS: prep.py's latents; 32 slices suffice).
Why: the seventh measurements found the step launch-bound (9-10 thousand ATen calls at 64 tokens)."""
import os
import sys
import time

import numpy as np
import torch

from rtgen.engine.config import load_config
from rtgen.ssm.dispatch import use_backend

dev = torch.device("cuda")
z = np.load(os.environ.get("LATENTS", "local/gpu/latents.npz"))
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 10
print(torch.cuda.get_device_name(), torch.__version__, flush=True)
task = load_config("benchmarks/diffma_gpu/b.yaml", ["latent.shift=0.03", "latent.scale=1.27"]).task
batch = {k: torch.from_numpy(z[k][:32].astype(np.float32)).to(dev) for k in ("x0", "ct")}
for mode in ("eager", "default", "reduce-overhead"):
    torch.manual_seed(0)
    model = task.build_model().to(dev)
    net = model if mode == "eager" else torch.compile(model, mode=mode)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    with use_backend("chunked"):
        t0 = time.perf_counter()
        for i in range(steps + 3):
            if i == 3:
                torch.cuda.synchronize()
                warm, t0 = time.perf_counter() - t0, time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = task.loss(net, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
    print(f"{mode:16s} warm-up (3 steps, compiling) {warm:6.1f} s, {(time.perf_counter() - t0) / steps * 1000:7.1f} ms/step, "
          f"loss {float(loss):.4f}", flush=True)
