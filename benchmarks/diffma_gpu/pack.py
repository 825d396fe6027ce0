"""Run folders -> at most 8 files under OUT (the last argument), each under the 16 MiB a device call
returns: config.json as <tag>_config.json, the weights as they are when small, else in bfloat16
shards of 14 MiB (<tag>_shard<i>.safetensors). unpack.py reverses it."""
import shutil
import sys
from pathlib import Path

import torch

from rtgen.core.checkpoint import load_weights, save_weights

SHARD = 14 * 2**20
out = Path(sys.argv[-1])
for run in map(Path, sys.argv[1:-1]):
    weights = run / "model.safetensors"
    if not weights.is_file():
        print("missing", weights)
        continue
    shutil.copy(run / "config.json", out / f"{run.name}_config.json")
    if weights.stat().st_size < SHARD:
        shutil.copy(weights, out / f"{run.name}_model.safetensors")
        continue
    shard, size, i = {}, 0, 0
    for k, v in load_weights(weights).items():
        v = v.to(torch.bfloat16) if v.is_floating_point() else v
        if shard and size + v.nbytes > SHARD:
            save_weights(out / f"{run.name}_shard{i}.safetensors", shard)
            shard, size, i = {}, 0, i + 1
        shard[k], size = v, size + v.nbytes
    save_weights(out / f"{run.name}_shard{i}.safetensors", shard)
print(sorted(p.name for p in out.iterdir()))
