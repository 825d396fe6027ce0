"""The planning study: plans from predicted and from reference doses, scored against the reference plans.

For each patient and beamlet size, in a process of its own (so that its peak memory is its own):
the influence matrix (read from `--cache` when there), then for each input dose, the reference
plan's dose and a prediction folder's, one plan per objective form (`--forms`, default `rtgen plan`'s
`dvh`; `bands` reads the DVH estimate `<id>_dvh.csv` beside a prediction, as `rtgen predict` writes it)
with `rtgen plan`'s settings (or those given), all forms from the one influence matrix, scored before
and after leaf sequencing:

- the OpenKBP dose score (mean |plan - reference| in the possible dose mask) and DVH score of the
  plan against the reference plan, and the input's own scores;
- the MAE of the plan to its input (how well the input was mimicked);
- the share of OpenKBP-Opt's clinical criteria met by the reference, the input and the plan;
- time per stage, segments, MU per fraction, and the process's peak resident memory.

    OPENBLAS_NUM_THREADS=1 python benchmarks/planning_study.py --patients data/openkbp/validation-pats \\
        --pred pred --bixel 7 --out study7 --cache influence --jobs 2

writes `study7/rows.csv` (one row per patient, beamlet size and input) and `study7/summary.md`
(the tables of the planning docs). pyRadPlan must be installed (docs/planning.md).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def plan_patient(path: str, bixel: float, inputs: dict[str, str], cache: str | None, objective: dict,
                 beams: int = 9, forms: tuple[str, ...] = ("dvh",)) -> list[dict]:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if cache is None and len(inputs) * len(forms) > 1:  # the plans share one influence matrix, dropped after
        with tempfile.TemporaryDirectory(prefix="rtgen-study-") as tmp:
            return plan_patient(path, bixel, inputs, tmp, objective, beams, forms)
    from rtgen.cli.plan import band_goals_for
    from rtgen.data.sources import load_patient
    from rtgen.dosimetry import OpenKBPScores
    from rtgen.dosimetry.criteria import default_criteria
    from rtgen.evaluation.dose import find_prediction, read_prediction
    from rtgen.planning.engine import BeamSet, patient_origin
    from rtgen.planning.optimise import Objective
    from rtgen.planning.plan import PlanSettings, make_plan

    patient = load_patient(Path(path), require_target=True)
    beam_set = BeamSet.equispaced(beams, bixel_mm=bixel)
    card = default_criteria()
    mask, structures, vv = patient.possible_dose_mask, patient.structures, patient.voxel_volume_mm3

    def scores(dose):
        s = OpenKBPScores()
        s.add(patient.id, patient.dose, dose, mask, structures, vv)
        return s.dose_score, s.dvh_score

    met = lambda dose: card.evaluate(dose, structures, vv)
    mae = lambda a, b: float(np.abs(a - b)[mask].mean())
    ref_c = met(patient.dose)
    rows, first = [], True
    for kind, folder in inputs.items():
        found = find_prediction(Path(folder), patient.id)
        if found is None:
            raise SystemExit(f"{folder}: no dose for {patient.id}")
        x = read_prediction(found, patient.grid, Path(path), mask)  # once per input, planned with each form
        in_c, in_scores = met(x), scores(x)
        for form in forms:
            if form == "bands" and kind == "reference":
                continue  # a reference plan has no DVH estimate
            goals = band_goals_for(Path(folder), patient.id) if form == "bands" else None
            settings = PlanSettings(beam_set, Objective(**{**objective, "form": form}))
            r = make_plan(patient, x, settings, patient_origin(patient), Path(cache) if cache else None, goals=goals)
            plan_c, seq_c = met(r.fluence_dose), met(r.delivered_dose)
            row = {"patient": patient.id, "bixel_mm": bixel, "input": kind, "form": form,
                   "beamlets": r.influence.n_beamlets,
                   "influence_s": round(r.timings["influence"], 1) if first else "",
                   "influence_cached": r.from_cache if first else "",
                   "optimisation_s": round(r.timings["optimisation"], 1),
                   "sequencing_s": round(r.timings["sequencing"], 1), "iterations": r.optimisation.iterations,
                   "mae_to_input": mae(r.fluence_dose, x), "mae_to_input_sequenced": mae(r.delivered_dose, x)}
            (row["input_dose_score"], row["input_dvh_score"]) = in_scores
            (row["plan_dose_score"], row["plan_dvh_score"]) = scores(r.fluence_dose)
            (row["sequenced_dose_score"], row["sequenced_dvh_score"]) = scores(r.delivered_dose)
            row.update({"criteria_applicable": ref_c.n_applicable, "met_reference": ref_c.n_met,
                        "met_input": in_c.n_met, "met_plan": plan_c.n_met, "met_sequenced": seq_c.n_met,
                        "segments": r.sequenced.n_segments, "mu_per_fraction": round(sum(r.mu()), 1)})
            rows.append(row)
            first = False
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kB -> GB (Linux)
    for row in rows:
        row["peak_memory_gb"] = round(peak, 2)
    return rows


def summary(rows: list[dict]) -> str:
    """Markdown tables: per beamlet size and input, means over patients and pooled criteria shares."""
    out = ["| beamlets | input | objective | patients | MAE to input (Gy), before / after sequencing | dose score "
           "(Gy): input / plan / sequenced | DVH score (Gy): input / plan / sequenced | criteria met: reference / "
           "input / plan / sequenced | segments | MU per fraction | optimisation (s) | influence (s) | peak memory (GB) |",
           "|" + " --- |" * 13]
    for bixel in sorted({float(r["bixel_mm"]) for r in rows}):
        for kind, form in dict.fromkeys((r["input"], r["form"]) for r in rows):
            rs = [r for r in rows if float(r["bixel_mm"]) == bixel and r["input"] == kind and r["form"] == form]
            if not rs:
                continue
            m = lambda k: float(np.mean([float(r[k]) for r in rs if r[k] != ""]))
            n = sum(int(r["criteria_applicable"]) for r in rs)
            share = lambda k: f"{100 * sum(int(r[k]) for r in rs) / n:.1f} %"
            inf = [float(r["influence_s"]) for r in rows if float(r["bixel_mm"]) == bixel and r["influence_s"] != ""
                   and str(r["influence_cached"]) == "False"]
            out.append(f"| {bixel:g} mm | {kind} | {form} | {len(rs)} | {m('mae_to_input'):.2f} / {m('mae_to_input_sequenced'):.2f} "
                       f"| {m('input_dose_score'):.2f} / {m('plan_dose_score'):.2f} / {m('sequenced_dose_score'):.2f} "
                       f"| {m('input_dvh_score'):.2f} / {m('plan_dvh_score'):.2f} / {m('sequenced_dvh_score'):.2f} "
                       f"| {share('met_reference')} / {share('met_input')} / {share('met_plan')} / "
                       f"{share('met_sequenced')} ({n}) | {m('segments'):.0f} | {m('mu_per_fraction'):.0f} "
                       f"| {m('optimisation_s'):.0f} | {np.mean(inf) if inf else float('nan'):.0f} "
                       f"| {max(float(r['peak_memory_gb']) for r in rs):.1f} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=Path, help="a split folder with reference doses")
    ap.add_argument("--pred", type=Path, action="append", default=[], help="a folder of predictions (repeatable)")
    ap.add_argument("--no-reference", action="store_true", help="do not plan from the reference doses")
    ap.add_argument("--bixel", default="7", help="beamlet sizes in mm, comma-separated")
    ap.add_argument("--limit", type=int, default=None, help="the first N patients")
    ap.add_argument("--cache", type=Path, default=None,
                    help="folder of cached influence matrices (default: none; each is computed and dropped)")
    ap.add_argument("--objective", default="{}", help="JSON of Objective fields, e.g. '{\"smooth_weight\": 2}'")
    ap.add_argument("--forms", default="dvh", help="objective forms to plan each input with, comma-separated "
                    "(dvh, voxel, bands): one influence matrix for all")
    ap.add_argument("--jobs", type=int, default=1, help="patients planned at once (each single-threaded)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--smoke", action="store_true", help="one bundled patient, 3 beams of 20 mm, 5 iterations (seconds)")
    a = ap.parse_args(argv)
    if importlib.util.find_spec("pyRadPlan") is None:
        print("pyRadPlan is not installed (see docs/planning.md): nothing measured")
        return
    beams = 9
    if a.smoke:
        import rtgen

        a.patients, a.limit, a.bixel, a.out, beams = (Path(rtgen.__file__).parent / "examples" / "openkbp", 1, "20",
                                                      Path("planning-study-smoke"), 3)
        a.objective = json.dumps({"iterations": 5})
    if a.patients is None or a.out is None:
        ap.error("--patients and --out are required (or --smoke)")
    paths = sorted(p for p in a.patients.iterdir() if p.is_dir())[: a.limit]
    inputs = {} if a.no_reference else {"reference": str(a.patients)}  # a split folder holds pt_N/dose.csv
    inputs.update({p.name: str(p) for p in a.pred})
    a.out.mkdir(parents=True, exist_ok=True)
    cache = str(a.cache) if a.cache is not None else None
    jobs = [(str(p), float(b), inputs, cache, json.loads(a.objective), beams,
             tuple(a.forms.split(","))) for b in a.bixel.split(",") for p in paths]
    rows, t = [], time.perf_counter()

    def record(job, result):
        rows.extend(result)
        print(f"{Path(job[0]).name} {job[1]:g} mm: " + "; ".join(
            f"{r['input']} ({r['form']}) MAE {r['mae_to_input']:.2f}/{r['mae_to_input_sequenced']:.2f} Gy, criteria "
            f"{r['met_sequenced']}/{r['criteria_applicable']} (reference {r['met_reference']})" for r in result),
            flush=True)
        with open(a.out / "rows.csv", "w", newline="") as f:
            w = csv.DictWriter(f, list(rows[0]))
            w.writeheader()
            w.writerows(rows)

    if a.smoke:  # in this process (its peak memory is then the caller's too)
        for job in jobs:
            record(job, plan_patient(*job))
    else:
        with ProcessPoolExecutor(a.jobs, max_tasks_per_child=1) as pool:  # a fresh process per patient: its own peak
            for job, result in zip(jobs, pool.map(plan_patient, *zip(*jobs))):
                record(job, result)
    (a.out / "summary.md").write_text(summary(rows))
    print(summary(rows) + f"\n{len(jobs)} plans sets in {time.perf_counter() - t:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
