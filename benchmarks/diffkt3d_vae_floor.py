"""What DiffKT3D's volume autoencoder loses, on a whole split: the floor of every DiffKT3D dose.

Runs the `volume_autoencoder` task's own validation (encode with the posterior mean, decode, on each
patient's whole cropped volume) on every patient of the split: OpenKBP dose and DVH scores of
decode(encode(dose)), and on the first --all-modalities patients the CT MAE (HU, in the body) and
the voxel agreement of the prescription map, OAR labels and body mask after the round trip.

    python benchmarks/diffkt3d_vae_floor.py runs/diffkt3d_vae data/openkbp/validation-pats --out floor.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from rtgen.core.checkpoint import read_config, resolve_checkpoint
from rtgen.tasks import task_from_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("split")
    ap.add_argument("--all-modalities", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    weights, config_path = resolve_checkpoint(args.run)
    config = read_config(config_path)
    config["data"] = {**config.get("data", {}), "val": args.split, "max_val_patients": None,
                      "val_all_modalities": args.all_modalities}
    task = task_from_checkpoint(config, str(config_path))
    model = task.load_model(weights)
    start = time.perf_counter()
    data = task.val_data(progress=True)
    metrics, _ = task.validate(model, data, torch.device("cpu"), 1)
    row = {"run": str(args.run), "patients": len(data), **metrics, "seconds": time.perf_counter() - start,
           "epochs": config.get("training", {}).get("epochs_run")}
    print(json.dumps(row, indent=1))
    if args.out:
        args.out.write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
