"""OUT files of run.sh -> runnable run folders local/runs/<tag>_gpu (fp32 weights from bf16 shards)."""
import shutil, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for cfg in src.glob("*_config.json"):
    tag = cfg.name.removesuffix("_config.json")
    run = dst / tag
    run.mkdir(parents=True, exist_ok=True)
    shutil.copy(cfg, run / "config.json")
    if (src / f"{tag}_model.safetensors").is_file():
        shutil.copy(src / f"{tag}_model.safetensors", run / "model.safetensors")
    else:
        w = {}
        for s in sorted(src.glob(f"{tag}_shard*.safetensors")):
            w.update({k: v.float() for k, v in load_file(s).items()})
        save_file(w, run / "model.safetensors")
    print(run, sorted(p.name for p in run.iterdir()))
