"""unet_seeds.py's files -> one run folder per seed and epoch: python unet_seeds_unpack.py CONFIG_JSON RUNS FILE...

Each FILE (s<seed>.safetensors) becomes RUNS/s<seed>e<epoch>/ with CONFIG_JSON (the recipe's config,
train.seed set to the file's seed) and that epoch's weights in float32."""
import json
import sys
from pathlib import Path

from rtgen.core.checkpoint import load_weights, save_weights

config = json.loads(Path(sys.argv[1]).read_text())
runs = Path(sys.argv[2])
for f in map(Path, sys.argv[3:]):
    seed = int(f.stem.lstrip("s"))
    by_epoch: dict[str, dict] = {}
    for k, v in load_weights(f).items():
        epoch, name = k.split(".", 1)
        by_epoch.setdefault(epoch, {})[name] = v.float() if v.is_floating_point() else v
    for epoch, weights in sorted(by_epoch.items()):
        run = runs / f"s{seed}{epoch}"
        run.mkdir(parents=True, exist_ok=True)
        save_weights(run / "model.safetensors", weights)
        cfg = {**config, "train": {**config.get("train", {}), "seed": seed}}
        (run / "config.json").write_text(json.dumps(cfg, indent=1))
        print(run)
