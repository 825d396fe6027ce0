"""The plan part of a dose report (`rtgen report --plan`): prediction, plan and reference side by
side, and the clinical criteria each meets.

`rtgen plan` turns a predicted dose into a deliverable plan; the question a reader then has is
whether the plan kept what the prediction promised. So each patient section gains a "Plan" part:
the slices of reference, prediction and plan with one colourwash and one set of isodoses, their
DVHs in one figure (reference solid, prediction dashed, plan dotted), and one row per criterion of
a criteria set (default: OpenKBP-Opt's, `rtgen.dosimetry.criteria.default_criteria`) with the value
and met/failed of each dose; a criterion whose structure the patient lacks is not applicable and
shows a dash. The plan's row of ``plans.csv``, where there is one, adds how closely the plan
follows the dose it mimicked before and after leaf sequencing, its segments and its monitor units
per fraction. The cohort section gains the share of criteria met by each dose, pooled over the
patients (`rtgen.dosimetry.criteria.pooled_share`).

A patient without a reference dose shows prediction and plan only.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from rtgen.core.errors import DataError
from rtgen.data.records import Patient
from rtgen.dosimetry.criteria import CriteriaResult, CriteriaSet, pooled_share
from rtgen.evaluation.report_html import NO_REFERENCE, _e, _num

KINDS = (("reference", "Reference"), ("predicted", "Predicted"), ("plan", "Plan"))
# the columns of plans.csv shown in a patient's plan part: column, heading, format
PLAN_NUMBERS = (
    ("mae_to_input_gy", "MAE to the mimicked dose, before sequencing (Gy)", ".2f"),
    ("mae_to_input_sequenced_gy", "after sequencing (Gy)", ".2f"),
    ("segments", "Segments", ".0f"),
    ("mu_per_fraction", "MU per fraction", ".1f"),
)


def read_plans_table(plan_dir: str | Path) -> dict[str, dict]:
    """The rows of ``plan_dir/plans.csv`` (as `rtgen plan` writes it) by patient id; {} when there is
    none. A file without a ``patient`` column, or unreadable, is one DataError naming it."""
    path = Path(plan_dir) / "plans.csv"
    if not path.is_file():
        return {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(path, f"cannot be read ({e})") from None
    if rows and "patient" not in rows[0]:
        raise DataError(path, "has no 'patient' column: expected the plans.csv that rtgen plan writes")
    return {row["patient"]: row for row in rows if row.get("patient")}


def judge(patient: Patient, prediction: np.ndarray, plan: np.ndarray, criteria: CriteriaSet) -> dict[str, CriteriaResult]:
    """The criteria results of the reference (when the patient has one), the prediction and the plan."""
    doses = {"reference": patient.dose, "predicted": prediction, "plan": plan}
    return {kind: criteria.evaluate(np.asarray(dose), patient.structures, patient.voxel_volume_mm3)
            for kind, dose in doses.items() if dose is not None}


def _met_cell(met: bool | None, label: str, kind: str) -> str:
    attrs = f"data-criterion='{_e(label)}' data-dose='{kind}'"
    if met is None:
        return f"<td class='na' {attrs}>{NO_REFERENCE}</td>"
    return f"<td class='{'ok' if met else 'fail'}' {attrs}>{'met' if met else 'failed'}</td>"


def criteria_table(patient_id: str, judged: dict[str, CriteriaResult]) -> str:
    """One row per criterion: the value (Gy) and met/failed of each dose judged; a dash where not applicable."""
    pid = _e(patient_id)
    kinds = [(k, title) for k, title in KINDS if k in judged]
    top = ["<tr><th class='name' rowspan='2'>Criterion</th>"]
    top += [f"<th colspan='2'>{title}</th>" for _, title in kinds] + ["</tr>"]
    sub = ["<tr>"] + ["<th>Gy</th><th>met</th>" for _ in kinds] + ["</tr>"]
    first = next(iter(judged.values()))
    body = []
    for i, row in enumerate(first.rows):
        cells = [f"<td class='name'>{_e(row.label)}</td>"]
        for kind, _ in kinds:
            r = judged[kind].rows[i]
            value = NO_REFERENCE if r.value is None else _num(r.value)
            cells.append(f"<td>{value}</td>{_met_cell(r.met, r.label, kind)}")
        body.append("<tr>" + "".join(cells) + "</tr>")
    total = ["<tr class='mean'><td class='name'>Criteria met</td>"]
    total += [f"<td colspan='2' data-dose='{kind}'>{judged[kind].n_met} of {judged[kind].n_applicable}</td>"
              for kind, _ in kinds]
    body.append("".join(total) + "</tr>")
    return (f"<table id='plan-criteria-{pid}' class='metrics plan-criteria'>{''.join(top)}{''.join(sub)}"
            f"{''.join(body)}</table>")


def plan_numbers(patient_id: str, row: dict | None) -> str:
    """The plan's own numbers from its plans.csv row (those present), or nothing."""
    if not row:
        return ""
    shown = []
    for key, heading, fmt in PLAN_NUMBERS:
        text = str(row.get(key, "") or "").strip()
        if not text:
            continue
        try:
            text = _num(float(text), fmt)
        except ValueError:
            pass
        shown.append((key, heading, text))
    if not shown:
        return ""
    head = "".join(f"<th>{_e(h)}</th>" for _, h, _ in shown)
    cells = "".join(f"<td data-plan='{_e(k)}'>{_e(t)}</td>" for k, _, t in shown)
    return (f"<table id='plan-numbers-{_e(patient_id)}' class='metrics plan-numbers'><tr>{head}</tr>"
            f"<tr>{cells}</tr></table><p class='note'>From plans.csv: the mean absolute difference between the "
            "plan's dose and the dose it mimicked inside the possible dose mask, before and after leaf "
            "sequencing; the step-and-shoot segments of all beams; monitor units per fraction.</p>")


def plan_part(patient_id: str, has_reference: bool, judged: dict[str, CriteriaResult], criteria_name: str,
              slices_uri: str, dvh_uri: str, row: dict | None = None) -> str:
    """The "Plan" part of a patient section."""
    pid = _e(patient_id)
    shown = "reference, predicted and plan dose" if has_reference else "predicted and plan dose"
    styles = "reference solid, prediction dashed, plan dotted" if has_reference else "prediction dashed, plan dotted"
    no_ref = "" if has_reference else " No reference dose: the prediction and the plan only."
    return (
        f"<div id='plan-{pid}' class='plan'><h3>Plan</h3>"
        f"<p class='note'>The plan's delivered dose beside the prediction{' and the reference' if has_reference else ''}, "
        f"with the same colour scale and isodoses.{no_ref}</p>"
        f"{plan_numbers(patient_id, row)}"
        f"<img id='plan-slices-{pid}' class='slice-img' alt='{pid}: {shown}, axial, coronal and sagittal' "
        f"src='{slices_uri}'>"
        f"<img id='plan-dvh-{pid}' class='dvh-plot' alt='{pid}: DVH, {styles}' src='{dvh_uri}'>"
        f"<h3>Clinical criteria ({_e(criteria_name)})</h3>{criteria_table(patient_id, judged)}"
        f"<p class='note'>{NO_REFERENCE}: not applicable (the patient lacks the structure).</p></div>"
    )


def _share(results: list[CriteriaResult]) -> str:
    if not results:
        return NO_REFERENCE
    met, applicable = sum(r.n_met for r in results), sum(r.n_applicable for r in results)
    share = pooled_share(results)
    return f"{_num(100 * share, '.1f')} % ({met} of {applicable})" if applicable else NO_REFERENCE


def plan_cohort(judged: list[dict[str, CriteriaResult]], criteria_name: str) -> str:
    """The share of criteria met by the reference, the prediction and the plan, pooled over patients
    (each patient-criterion pair counts once), and over how many patients each is."""
    if not judged:
        return ""
    head, cells = ["<tr><th class='name'></th>"], ["<tr><td class='name'>Criteria met (pooled)</td>"]
    for kind, title in KINDS:
        results = [j[kind] for j in judged if kind in j]
        head.append(f"<th>{title} ({len(results)} patient{'s' if len(results) != 1 else ''})</th>")
        cells.append(f"<td data-dose='{kind}'>{_share(results)}</td>")
    return (f"<h3>Plans: clinical criteria ({_e(criteria_name)})</h3>"
            f"<table id='plan-criteria-cohort' class='metrics plan-criteria'>{''.join(head)}</tr>{''.join(cells)}</tr>"
            "</table><p class='note'>The share of the applicable criteria met, over every patient and criterion "
            "(a criterion whose structure a patient lacks is left out).</p>")
