"""What DiffKT3D's volume autoencoder loses, on a whole split: the floor of every DiffKT3D dose.

Runs the `volume_autoencoder` task's own validation (encode with the posterior mean, decode, on each
patient's whole cropped volume) on every patient of the split: OpenKBP dose and DVH scores of
decode(encode(dose)), and on the first --all-modalities patients the CT MAE (HU, in the body) and
the voxel agreement of the prescription map, OAR labels and body mask after the round trip.
With --prior DIR (pt_N.csv dose priors of the split) it also scores the floor of the dose DiffKT3D
writes when the model has a prior slot: prior + D(E(dose)) - D(E(prior)) (`latent.dose_from_prior`),
and the prior alone.

    python benchmarks/diffkt3d_autoencoder_floor.py runs/diffkt3d_autoencoder data/openkbp/validation-pats --out floor.json
    python benchmarks/diffkt3d_autoencoder_floor.py runs/diffkt3d_autoencoder VAL --prior PRIORS --all-modalities 0
    python benchmarks/diffkt3d_autoencoder_floor.py --smoke

RUN is a `volume_autoencoder` run (configs/diffkt3d_autoencoder.yaml) or the autoencoder a DiffKT3D
run keeps (RUN/autoencoder, e.g. that of hub:diffkt3d_openkbp). `--smoke` scores the shipped
model's autoencoder on one bundled patient, all modalities, with a blurred stand-in prior.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import common
import numpy as np
import torch
from tqdm.auto import tqdm

from rtgen.core.checkpoint import read_config, resolve_checkpoint
from rtgen.data.sources.openkbp import read_dose_csv
from rtgen.data.transforms.modalities import decode_modality, dose_to_unit
from rtgen.dosimetry import OpenKBPScores
from rtgen.inference import resolve_model
from rtgen.tasks import task_from_checkpoint
from rtgen.tasks.diffkt3d import AUTOENCODER_DIR
from rtgen.tasks.volume_autoencoder import reconstruct


def prior_floor(model, data: list[dict], priors: Path) -> dict:
    """Dose and DVH scores of the prior alone and of prior + D(E(dose)) - D(E(prior))."""
    alone, relative = OpenKBPScores(), OpenKBPScores()
    for case in tqdm(data, desc="prior-relative floor", leave=False):
        patient, crop = case["patient"], case["crop"]
        prior = read_dose_csv(priors / f"{patient.id}.csv")
        base = reconstruct(model, crop.take(dose_to_unit(prior)), "cpu")
        rec = reconstruct(model, case["volumes"]["dose"].astype(np.float32), "cpu")
        gy = crop.put(crop.take(prior) + decode_modality("dose", rec) - decode_modality("dose", base), patient.grid)
        mask, args = patient.possible_dose_mask, (patient.structures, patient.voxel_volume_mm3)
        alone.add(patient.id, patient.dose, prior * mask, mask, *args)
        relative.add(patient.id, patient.dose, np.clip(gy, 0, None) * mask, mask, *args)
    return {"prior_dose_score": alone.dose_score, "prior_dvh_score": alone.dvh_score,
            "prior_relative_dose_score": relative.dose_score, "prior_relative_dvh_score": relative.dvh_score}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, nargs="?")
    ap.add_argument("split", nargs="?")
    ap.add_argument("--all-modalities", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prior", type=Path, default=None, help="pt_N.csv dose priors of the split")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--limit", type=int, default=None, help="first N patients of the split")
    ap.add_argument("--smoke", action="store_true", help="seconds: the shipped autoencoder on one bundled patient")
    args = ap.parse_args(argv)
    if args.smoke:
        work = common.smoke_dir("autoencoder-floor")
        args.run = args.run or resolve_model("hub:diffkt3d_openkbp") / AUTOENCODER_DIR
        args.split = args.split or str(common.bundled_openkbp())
        args.prior = args.prior or common.blurred_doses(Path(args.split), work / "priors")
        args.limit, args.all_modalities, args.out = 1, 1, work / "floor.json"
    if not args.run or not args.split:
        ap.error("RUN and SPLIT are required (or --smoke)")
    with common.torch_threads(args.threads):
        run(args)


def run(args: argparse.Namespace) -> None:
    weights, config_path = resolve_checkpoint(args.run)
    config = read_config(config_path)
    config["data"] = {**config.get("data", {}), "val": args.split, "max_val_patients": args.limit,
                      "val_all_modalities": args.all_modalities}
    task = task_from_checkpoint(config, str(config_path))
    model = task.load_model(weights)
    start = time.perf_counter()
    data = task.val_data(progress=True)
    metrics, _ = task.validate(model, data, torch.device("cpu"), 1)
    if args.prior:
        metrics.update(prior_floor(model, data, args.prior))
    row = {"run": str(args.run), "patients": len(data), **metrics, "seconds": time.perf_counter() - start,
           "epochs": config.get("training", {}).get("epochs_run")}
    print(json.dumps(row, indent=1))
    if args.out:
        args.out.write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
