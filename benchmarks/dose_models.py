"""Every dose model on the same validation patients: one table from folders of predictions.

    rtgen predict --model RUN_A --patients VAL --out pred/a     (time it: seconds per patient)
    rtgen predict --model RUN_B --patients VAL --out pred/b
    python benchmarks/dose_models.py --ref VAL --pred a=pred/a --pred b=pred/b [--markdown out.md]
    python benchmarks/dose_models.py --smoke

Prints, per model: OpenKBP dose and DVH scores (mean over patients, pooled metrics); then the
absolute error of D95 and D99 per PTV and of Dmean and D0.1cc per OAR, averaged over the patients
that have the structure; then paired tests (t and Wilcoxon) of the per-patient dose errors of each
model against the first. The predictions are read exactly as `rtgen evaluate` reads them.
`--smoke` scores two stand-ins on the bundled patients: their reference doses blurred by 1 and 3 voxels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import common
import numpy as np

from rtgen.bench.ssm import machine_description
from rtgen.core.structures import OARS, TARGETS
from rtgen.data.sources import PatientSplit
from rtgen.dosimetry import OpenKBPScores, compare_paired
from rtgen.evaluation.dose import find_prediction, read_prediction

ROWS = [(t, m) for t in TARGETS for m in ("D_95", "D_99", "D_1")] + [(o, m) for o in OARS for m in ("mean", "D_0.1_cc")]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", type=Path)
    ap.add_argument("--pred", action="append", help="NAME=FOLDER (repeatable; the first is the baseline)")
    ap.add_argument("--markdown", type=Path, help="also write the tables here")
    ap.add_argument("--smoke", action="store_true", help="seconds: two blurred stand-ins on the bundled patients")
    a = ap.parse_args(argv)
    if a.smoke:
        work = common.smoke_dir("dose-models")
        a.ref = a.ref or common.bundled_openkbp()
        a.pred = [f"blur{s}={common.blurred_doses(a.ref, work / f'blur{s}', s)}" for s in (1, 3)]
        a.markdown = work / "dose_models.md"
    if not a.ref or not a.pred:
        ap.error("--ref and --pred are required (or --smoke)")
    models = dict(p.split("=", 1) for p in a.pred)
    refs = PatientSplit(a.ref, load_ct=False, progress=False)
    scores = {name: OpenKBPScores() for name in models}
    for ref in refs:
        for name, folder in models.items():
            path = find_prediction(Path(folder), ref.id)
            if path is None:
                raise SystemExit(f"{folder}: no prediction for {ref.id}")
            pred = read_prediction(path, ref.grid)
            scores[name].add(ref.id, ref.dose, pred, ref.possible_dose_mask, ref.structures, ref.voxel_volume_mm3)
    lines = [f"{len(refs)} patients of {a.ref}; {machine_description('cpu')}", "",
             "| model | dose score (Gy) | DVH score (Gy) |", "|---|---|---|"]
    lines += [f"| {n} | {s.dose_score:.3f} | {s.dvh_score:.3f} |" for n, s in scores.items()]
    lines += ["", "| structure | metric | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for structure, metric in ROWS:
        cells = []
        for s in scores.values():
            errs = [p.dvh_errors[(metric, structure)] for p in s.patients if (metric, structure) in p.dvh_errors]
            cells.append(f"{np.mean(errs):.2f}" if errs else "-")
        if any(c != "-" for c in cells):
            lines.append(f"| {structure} | {metric} | " + " | ".join(cells) + " |")
    names = list(models)
    base = [p.dose_error for p in scores[names[0]].patients]
    lines += ["", f"Paired tests of per-patient dose error against {names[0]} (negative: lower error than {names[0]}):", "",
              "| model | mean difference (Gy) | t p-value | Wilcoxon p-value |", "|---|---|---|---|"]
    for n in names[1:]:
        c = compare_paired([p.dose_error for p in scores[n].patients], base)
        lines.append(f"| {n} | {c.mean_difference:+.3f} | {c.t_pvalue:.2g} | {c.wilcoxon_pvalue:.2g} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.markdown:
        a.markdown.write_text(text)


if __name__ == "__main__":
    main()
