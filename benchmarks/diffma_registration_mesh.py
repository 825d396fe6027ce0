"""Does a finer B-spline registration help synthesis? Register a split's raw CT/MR pairs with several
B-spline meshes, synthesise each patient's MR from its registered CT with one trained model, and score
it against the (unmoved) MR, as `rtgen predict` + `rtgen evaluate` on the registered folders would.

    python benchmarks/diffma_registration_mesh.py RAW/validation OUT [--model rtgen/hub/unet_sts] \
        [--mesh 35:5 20:10 ...]

Each mesh is SPACING_MM:MAX_INTERVALS (`RegistrationSettings.bspline_spacing_mm` and
`bspline_max_intervals`; 35:5 is the default). The MR is the fixed image, so only the CT moves: the
reference is the same for every mesh and the scores compare alignments. One JSON line per mesh: QA
means (body Dice, MI after), the scores, and the patients' PSNR.

Why: the error left in the synthetic MR is shared by every training seed (README, ninth
measurements), and the registration residual is one suspect; a model trained on the default
registration still synthesises from wherever the CT was put.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from diffma_sampling import score_setting  # benchmarks/: one pass each, as `rtgen predict` makes it
from rtgen.data.registration import RegistrationSettings
from rtgen.data.registration.folders import find_pairs as find_raw_pairs
from rtgen.data.registration.run import register_patient
from rtgen.data.sources.image_pairs import find_pairs, load_pair
from rtgen.inference import load_predictor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("raw", type=Path, help="a folder of raw CT/MR patient folders (e.g. ct-mr-sts/validation)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", type=Path, default=Path("rtgen/hub/unet_sts"))
    ap.add_argument("--setting", default="flips", help="diffma_sampling setting: flips/once, or e.g. ddim:10@0.03")
    ap.add_argument("--mesh", nargs="+", default=["35:5", "20:10"])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    pred = load_predictor(a.model, "cpu")
    for mesh in a.mesh:
        spacing, intervals = mesh.split(":")
        settings = RegistrationSettings(threads=a.threads, bspline_spacing_mm=float(spacing),
                                        bspline_max_intervals=int(intervals))
        dest = a.out / mesh.replace(":", "_")
        t0, qa = time.perf_counter(), []
        for files in find_raw_pairs(a.raw):
            report = register_patient(files, dest, settings, keep_failed=True).as_dict()
            qa.append(report)
        seconds = (time.perf_counter() - t0) / max(len(qa), 1)
        pairs = [load_pair(f) for f in find_pairs(dest)]
        rows, _ = score_setting(pred, pairs, a.setting)
        print(json.dumps({
            "mesh": mesh, "register_s_per_patient": round(seconds, 1),
            "dice_after": round(float(np.mean([r["dice_after"] for r in qa])), 4),
            "mi_after": round(float(np.mean([r["mi_after"] for r in qa])), 4),
            **{k: round(float(np.mean([r[k] for r in rows])), 2) for k in rows[0]},
            "psnr per patient": {p.id: round(r["psnr"], 2) for p, r in zip(pairs, rows)},
        }), flush=True)


if __name__ == "__main__":
    main()
