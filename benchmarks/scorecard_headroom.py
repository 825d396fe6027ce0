"""How far simple, structure-wise edits of a predicted dose move the HN-SIB scorecard, and at what
OpenKBP dose-score cost: the headroom a scorecard-guided fine-tuning (ScardNFT) could reach.

    python benchmarks/scorecard_headroom.py VALIDATION_SPLIT PREDICTIONS [--limit N]
    python benchmarks/scorecard_headroom.py --smoke

PREDICTIONS is a folder of pt_N.csv (or .nii.gz) doses, e.g. `rtgen predict --model
hub:lightgbm_dose_openkbp`. Each edit scales the dose inside one region: the targets (PTVs dilated by
2 voxels), or the organs at risk outside them. `scorecard` is the fraction of the template's points
(what `rtgen evaluate --scorecard` reports), `weighted` eq. 9's normalised score (ScardNFT's reward
without its anchors). The plans' own row shows where the clinical plans sit on the same scorecard.
`--smoke` edits a stand-in prediction (the reference dose blurred) of one bundled patient.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import common
import numpy as np
from scipy import ndimage

from rtgen.data.sources import find_patients, load_patient
from rtgen.dosimetry import dose_score
from rtgen.dosimetry.scorecard import Scorecard, prescription_from_name
from rtgen.evaluation.dose import find_prediction, read_prediction

EDITS = [("prediction", 1.0, 1.0), ("targets x 1.01", 1.01, 1.0), ("targets x 1.02", 1.02, 1.0),
         ("targets x 1.04", 1.04, 1.0), ("organs x 0.97", 1.0, 0.97), ("organs x 0.94", 1.0, 0.94),
         ("targets x 1.02, organs x 0.94", 1.02, 0.94)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("split", type=Path, nargs="?")
    ap.add_argument("predictions", type=Path, nargs="?")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--smoke", action="store_true", help="seconds: a blurred stand-in on one bundled patient")
    args = ap.parse_args(argv)
    if args.smoke:
        args.split = args.split or common.bundled_openkbp()
        args.predictions = args.predictions or common.blurred_doses(args.split, common.smoke_dir("headroom"))
        args.limit = 1
    if not args.split or not args.predictions:
        ap.error("SPLIT and PREDICTIONS are required (or --smoke)")
    card = Scorecard.default_hn_sib()
    rows: dict[str, list] = {}
    for path in find_patients(args.split)[: args.limit]:
        p = load_patient(path)
        mask = p.possible_dose_mask.astype(bool)
        found = find_prediction(args.predictions, p.id)
        if found is None:
            raise SystemExit(f"{args.predictions}: no prediction for {p.id}")
        dose = read_prediction(found, p.grid) * mask
        ptv = np.zeros(p.grid, bool)
        oar = np.zeros(p.grid, bool)
        for name, m in p.structures.items():
            (oar if prescription_from_name(name) is None else ptv)[...] |= m
        near_ptv = ndimage.binary_dilation(ptv, iterations=2)
        organs = oar & ~near_ptv
        for name, t, o in EDITS:
            d = np.where(near_ptv, dose * t, np.where(organs, dose * o, dose)) * mask
            sc = card.evaluate(d, p.structures, p.voxel_volume_mm3)
            rows.setdefault(name, []).append((dose_score(p.dose, d, mask), sc.fraction, sc.weighted_score))
        sc = card.evaluate(p.dose * mask, p.structures, p.voxel_volume_mm3)
        rows.setdefault("the plans", []).append((0.0, sc.fraction, sc.weighted_score))
    print(f"{len(rows['the plans'])} patients")
    print("| dose | dose score (Gy) | scorecard | weighted |\n| --- | --- | --- | --- |")
    for name, values in rows.items():
        a = np.asarray(values)
        print(f"| {name} | {a[:, 0].mean():.3f} | {100 * a[:, 1].mean():.2f} % | {100 * a[:, 2].mean():.2f} % |")


if __name__ == "__main__":
    main()
