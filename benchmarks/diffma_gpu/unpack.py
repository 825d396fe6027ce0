"""pack.py's files (SRC) -> run folders DST/<tag> that rtgen predict takes (float32 weights again)."""
import shutil
import sys
from pathlib import Path

from rtgen.core.checkpoint import load_weights, save_weights

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for config in src.glob("*_config.json"):
    tag = config.name.removesuffix("_config.json")
    run = dst / tag
    run.mkdir(parents=True, exist_ok=True)
    shutil.copy(config, run / "config.json")
    if (src / f"{tag}_model.safetensors").is_file():
        shutil.copy(src / f"{tag}_model.safetensors", run / "model.safetensors")
    else:
        weights = {}
        for shard in sorted(src.glob(f"{tag}_shard*.safetensors")):
            weights.update({k: v.float() for k, v in load_weights(shard).items()})
        save_weights(run / "model.safetensors", weights)
    print(run, sorted(p.name for p in run.iterdir()))
