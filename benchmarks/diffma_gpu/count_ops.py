"""ATen calls of one DiffMa-B training step (loss and backward, batch 8, CPU, PyTorch profiler) on a
given SSM backend: on a GPU each non-view call is at least one kernel launch, and at 64 tokens a
slice the launches, not the arithmetic, set the step time.
python benchmarks/diffma_gpu/count_ops.py [torch|chunked|auto]   (LATENTS: prep.py's file)"""
import os
import sys

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from rtgen.engine.config import load_config
from rtgen.ssm.dispatch import set_backend

set_backend(sys.argv[1] if len(sys.argv) > 1 else "chunked")
task = load_config("benchmarks/diffma_gpu/b.yaml", ["latent.shift=0.03", "latent.scale=1.27"]).task
torch.manual_seed(0)
model = task.build_model()
z = np.load(os.environ.get("LATENTS", "local/gpu/latents.npz"))
batch = {k: torch.from_numpy(z[k][:8].astype(np.float32)) for k in ("x0", "ct")}
task.loss(model, batch).backward()  # warm-up
with profile(activities=[ProfilerActivity.CPU]) as p:
    task.loss(model, batch).backward()
views = {"aten::as_strided", "aten::view", "aten::reshape", "aten::transpose", "aten::t", "aten::select",
         "aten::slice", "aten::unsqueeze", "aten::squeeze", "aten::expand", "aten::permute", "aten::narrow",
         "aten::detach", "aten::resolve_conj", "aten::resolve_neg", "aten::_unsafe_view", "aten::alias"}
calls = {e.key: e.count for e in p.key_averages() if e.key.startswith("aten::")}
print(f"backend {sys.argv[1] if len(sys.argv) > 1 else 'chunked'}: {sum(calls.values())} ATen calls, "
      f"{sum(v for k, v in calls.items() if k not in views)} of them not views")
