"""Recompute the BatchNorm statistics of a regression checkpoint from training patients.

    python scripts/recalibrate_bn.py MODEL_DIR TRAIN_SPLIT OUT_DIR [--patients 30] [--seed 0] [--workers 1]

Tried once on the shipped MambaUNetV2 reference model, whose EMA weights were saved with the
initial BatchNorm statistics (see its model card); it scored worse, so the model ships unchanged.
Reads `--patients` training patients drawn with `--seed`, re-estimates running mean/var over all
their slices (no augmentation) and writes OUT_DIR/model.safetensors with config.json beside it
(validation scores cleared: score the result with `rtgen predict` + `rtgen evaluate`). Weights
other than BatchNorm buffers are unchanged.
"""

from __future__ import annotations

import argparse
import json
import random

import numpy as np

from rtgen.core.atomic import atomic_write_text, staged_dir
from rtgen.core.checkpoint import save_weights
from rtgen.data.datasets.dose_slices import build_slices
from rtgen.data.sources import find_patients
from rtgen.engine.batchnorm import has_batchnorm, recalibrate_batchnorm
from rtgen.inference.predictor import load_predictor


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("train")
    ap.add_argument("out")
    ap.add_argument("--patients", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args()
    pred = load_predictor(a.model, device="cpu")
    if not has_batchnorm(pred.model):
        raise SystemExit(f"{a.model}: the network has no BatchNorm layer; nothing to recalibrate")
    paths = find_patients(a.train)
    chosen = sorted(random.Random(a.seed).sample(paths, min(a.patients, len(paths))))
    slices = build_slices(chosen, pred.features, storage_dtype=np.float32, workers=a.workers,
                          desc="training features")
    n = recalibrate_batchnorm(pred.model, (ps.images for ps in slices), batch_size=32)
    cfg = dict(pred.config)
    cfg["validation"] = {}
    cfg["batchnorm_recalibration"] = {"train_patients": [p.name for p in chosen], "slices": n, "seed": a.seed,
                                      "source": str(a.model)}
    with staged_dir(a.out) as tmp:
        save_weights(tmp / "model.safetensors", pred.model.state_dict())
        atomic_write_text(tmp / "config.json", json.dumps(cfg, indent=2))
    print(f"recomputed BatchNorm statistics over {n} slices of {len(chosen)} training patients -> {a.out}")


if __name__ == "__main__":
    main()
