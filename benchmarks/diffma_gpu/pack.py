"""Run folders -> at most 8 files under OUT: DiffMa-B weights as bf16 shards under 16 MiB, configs."""
import shutil, sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
out = Path(sys.argv[-1])
for run in sys.argv[1:-1]:
    run = Path(run)
    tag = run.name
    if not (run / "model.safetensors").is_file():
        print("missing", run); continue
    shutil.copy(run / "config.json", out / f"{tag}_config.json")
    w = load_file(run / "model.safetensors")
    size = sum(v.numel() * v.element_size() for v in w.values())
    if size < 15 * 2**20:
        shutil.copy(run / "model.safetensors", out / f"{tag}_model.safetensors"); continue
    w = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in w.items()}
    shard, n, i = {}, 0, 0
    for k, v in w.items():
        b = v.numel() * v.element_size()
        if shard and n + b > 14 * 2**20:
            save_file(shard, out / f"{tag}_shard{i}.safetensors"); shard, n, i = {}, 0, i + 1
        shard[k], n = v.contiguous(), n + b
    save_file(shard, out / f"{tag}_shard{i}.safetensors")
print(sorted(p.name for p in out.iterdir()))
