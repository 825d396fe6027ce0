"""The HTML of a dose report (`rtgen report`): the cohort summary, each patient's section with its
figures and metric tables, the stylesheet and the Content-Security-Policy of the page.

A patient without a reference dose (a new patient predicted straight from a DICOM export by
``rtgen predict --report``) gets a prediction-only section: its metric values without any
comparison or highlighting; the cohort table shows a dash for its scores, and the cohort scores
are those of the patients that have a reference.
"""

from __future__ import annotations

import html

import numpy as np

from rtgen.dosimetry import OpenKBPScores
from rtgen.evaluation.report_numbers import CRITERIA, METRIC_LABELS, TABLE_METRICS, PatientReport

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0;
       color: #1d2329; background: #f4f6f8; }
header { background: #1f3a5f; color: white; padding: 16px 28px; }
header h1 { margin: 0 0 4px 0; font-size: 22px; }
header p { margin: 2px 0; font-size: 13px; opacity: 0.9; }
main { padding: 8px 28px 40px 28px; max-width: 1280px; }
section { background: white; border-radius: 6px; padding: 14px 20px; margin: 18px 0;
          box-shadow: 0 1px 3px rgba(0,0,0,0.12); }
h2 { margin: 4px 0 10px 0; font-size: 19px; color: #1f3a5f; }
h3 { margin: 16px 0 6px 0; font-size: 15px; color: #333; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d5dbe1; padding: 3px 7px; text-align: right; }
th { background: #eef2f6; font-weight: 600; }
td.name, th.name { text-align: left; }
tr.mean td { font-weight: 600; background: #f7f9fb; }
td.fail { background: #fbd5d5; color: #9b1c1c; font-weight: 700; }
td.ok { color: #1e6b35; }
.delta { color: #555; }
img.slice-img, img.dvh-plot { display: block; max-width: 100%; height: auto; margin: 6px 0; }
@media print { body { background: white; } section { box-shadow: none; } img, table { break-inside: avoid; } }
ul.criteria { font-size: 13px; margin: 4px 0 0 0; }
.legend-fail { background: #fbd5d5; color: #9b1c1c; font-weight: 700; padding: 0 4px; }
nav a { margin-right: 10px; }
a { color: #1f5fa8; }
.note { font-size: 12px; color: #555; }
.wide-flag { background: #fde2c4; color: #8a3b00; font-weight: 700; padding: 0 4px; border-radius: 3px; }
td.outside { color: #9b1c1c; font-weight: 600; }
td.na { color: #777; text-align: center; }
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "" if x is None or not np.isfinite(x) else format(x, fmt)


def _delta(x: float, fmt: str = "+.2f") -> str:
    text = _num(x, fmt)
    return format(0.0, fmt) if text and float(text) == 0 else text  # never "-0.00"


NO_REFERENCE = "\u2014"  # what the cohort table shows for the scores of a patient without a reference dose


def cohort_section(reports: list[PatientReport], scores: OpenKBPScores, gamma: bool, extra: str = "") -> str:
    """The batch summary: cohort scores (over the patients with a reference dose) and one linked row per
    patient; `extra`, HTML added at its end (the plans' criteria)."""
    head = ["<tr><th class='name'>Patient</th><th>Dose score (Gy)</th><th>DVH score (Gy)</th>"]
    if gamma:
        head.append("<th>Gamma 3%/3 mm (%)</th>")
    head.append("<th class='name'>Failing criteria</th>")
    estimates = any(r.dvh_estimate for r in reports)
    if estimates:
        head.append("<th class='name'>Wide DVH bands</th>")
    head.append("</tr>")
    rows = []
    n_fail = 0
    compared = [r for r in reports if r.has_reference]
    for r in reports:
        if not r.has_reference:
            cells = [f"<td class='name'><a href='#{_e(r.patient_id)}'>{_e(r.patient_id)}</a></td>",
                     f"<td class='no-reference'>{NO_REFERENCE}</td>" * (3 if gamma else 2),
                     "<td class='name no-reference'>no reference dose</td>"]
            if estimates:
                cells.append(_wide_cell(r))
            rows.append("<tr class='patient-row'>" + "".join(cells) + "</tr>")
            continue
        fails = r.failures()
        n_fail += bool(fails)
        cells = [f"<td class='name'><a href='#{_e(r.patient_id)}'>{_e(r.patient_id)}</a></td>",
                 f"<td>{_num(r.dose_score, '.3f')}</td><td>{_num(r.dvh_score, '.3f')}</td>"]
        if gamma:
            cls = "fail" if r.gamma_fails else "ok"
            cells.append(f"<td class='{cls}'>{_num(r.gamma, '.1f')}</td>")
        text = ", ".join(fails) if fails else "none"
        cells.append(f"<td class='name {'fail' if fails else 'ok'}'>{_e(text)}</td>")
        if estimates:
            cells.append(_wide_cell(r))
        rows.append("<tr class='patient-row'>" + "".join(cells) + "</tr>")
    missing = len(reports) - len(compared)
    mean: list[str] = []
    highlighting = no_ref = ""
    if compared:
        who = (f"{len(reports)} patients" if not missing
               else f"{len(compared)} of {len(reports)} patients with a reference dose")
        mean = [f"<tr class='mean'><td class='name'>Cohort ({who})</td>",
                f"<td>{_num(scores.dose_score, '.3f')}</td><td>{_num(scores.dvh_score, '.3f')}</td>"]
        if gamma:
            g = [r.gamma for r in reports if r.gamma is not None]
            mean.append(f"<td>{_num(float(np.mean(g)) if g else None, '.1f')}</td>")
        mean.append(f"<td class='name'>{n_fail} of {len(compared)} patients with a failing criterion</td>")
        if estimates:
            n_wide = sum(bool(r.wide) for r in reports if r.dvh_estimate)
            mean.append(f"<td class='name'>{n_wide} of {sum(r.dvh_estimate for r in reports)} patients with a wide band</td>")
        mean.append("</tr>")
        criteria = "".join(f"<li>{_e(c)}</li>" for c in CRITERIA)
        highlighting = ("<h3>Highlighting</h3><p class='note'>A value is marked "
                        "<span class='legend-fail'>like this</span> when it fails one of these simple review "
                        "criteria (they point the eye; they are not a clinical protocol):</p>"
                        f"<ul class='criteria'>{criteria}</ul>")
    if not compared:  # nothing to compare: no cohort row, no criteria
        no_ref = ("<p class='note no-reference'>No patient has a reference dose: the sections show the "
                  "predictions only, without scores or highlighting.</p>")
    elif missing:
        no_ref = (f"<p class='note no-reference'>{missing} patient(s) have no reference dose: their sections "
                  "show the prediction only, and the cohort scores leave them out.</p>")
    return (
        "<section id='cohort' class='cohort'><h2>Cohort summary</h2>"
        "<p class='note'>Dose score: mean absolute dose error over the possible dose mask; DVH score: mean "
        "absolute error of the OpenKBP DVH metrics (OARs D0.1cc and Dmean, PTVs D99, D95, D1), pooled "
        f"as the OpenKBP challenge computes them.</p>{no_ref}"
        f"<table id='cohort-table' class='metrics'>{''.join(head)}{''.join(mean)}{''.join(rows)}</table>"
        f"{highlighting}{extra}</section>"
    )


def _wide_cell(r: PatientReport) -> str:
    if not r.dvh_estimate:
        return "<td class='name'></td>"
    if not r.wide:
        return "<td class='name'>none</td>"
    return f"<td class='name'><span class='wide-flag'>wide</span> {_e(', '.join(r.wide))}</td>"


def _band_text(row: dict, level: str) -> str:
    return f"{_num(row[f'lower_{level}'])} to {_num(row[f'upper_{level}'])}"


def wide_sentence(level: str) -> str:
    """What "wide" means, as the page says it."""
    from rtgen.dosimetry.bands import wide_definition

    return (f"A structure is flagged <span class='wide-flag'>wide</span> when, {wide_definition(level)}: the model "
            "is less sure of it in this patient than usual, so check it before relying on it.")


def estimate_section(r: PatientReport, pairs: list[tuple[dict, float | None]], figure_uri: str) -> str:
    """The DVH estimate of one patient: the figure (each structure's predicted DVH with its bands
    shaded), the wide flag, and the table of the scalar metrics with their bands (and the reference's
    value, marked when it lies outside the narrowest band)."""
    from rtgen.evaluation.report_figures import band_levels_of

    pid = _e(r.patient_id)
    levels = band_levels_of([row for row, _ in pairs])
    first = levels[0] if levels else "80"
    shades = " and ".join(f"{lv} %" for lv in levels)
    if r.wide:
        flag = (f"<p class='note wide-note'><span class='wide-flag'>wide</span> {_e(', '.join(r.wide))}. "
                f"{wide_sentence(first)}</p>")
    else:
        flag = f"<p class='note wide-note'>No structure's band is wide. {wide_sentence(first)}</p>"
    head = ["<tr><th class='name'>Structure</th><th class='name'>Metric</th><th>predicted (Gy)</th>"]
    head += [f"<th>{lv} % band (Gy)</th>" for lv in levels]
    head += ["<th>reference (Gy)</th>"] if r.has_reference else []
    head.append("</tr>")
    body = []
    for row, ref in pairs:
        if row["unit"] != "Gy":
            continue
        name, metric = row["structure"], row["metric"]
        label = METRIC_LABELS.get(metric, metric.replace("_", ""))
        mark = " <span class='wide-flag' title='a wide band'>wide</span>" if row.get("wide") else ""
        cells = [f"<td class='name'><b>{_e(name)}</b>{mark}</td><td class='name'>{_e(label)}</td>",
                 f"<td>{_num(row['predicted'])}</td>"]
        cells += [f"<td data-band='{_e(name)} {_e(label)} {lv}'>{_band_text(row, lv)}</td>" for lv in levels]
        if r.has_reference:
            outside = ref is not None and levels and not row[f"lower_{first}"] <= ref <= row[f"upper_{first}"]
            cells.append(f"<td class='{'outside' if outside else 'delta'}'>{_num(ref)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    outside_note = (f" A reference value outside the {first} % band is <span class='outside'>marked red</span>."
                    if r.has_reference else "")
    return (
        f"<h3>DVH estimate</h3><p class='note'>Each structure's predicted DVH (solid) with its bands shaded: "
        f"the {shades} bands hold the true value with {shades} probability for patients like those the model "
        "was calibrated on (the narrowest darkest); target D99/D95/D50/D1 as horizontal bars"
        f"{', the reference DVH in black' if r.has_reference else ''}.</p>{flag}"
        f"<img id='dvh-estimate-{pid}' class='dvh-plot dvh-estimate' alt='{pid}: DVH estimate with bands' "
        f"src='{figure_uri}'>"
        f"<table id='estimate-{pid}' class='metrics estimate'>{''.join(head)}{''.join(body)}</table>"
        f"<p class='note'>The bands of the DVH metrics (Gy).{outside_note}</p>"
    )


def _prediction_tables(r: PatientReport) -> tuple[str, str]:
    """The metric and index tables of a patient without a reference dose: the prediction's values only."""
    pid = _e(r.patient_id)
    head = ["<tr><th class='name'>Structure</th><th>Volume (cc)</th>"]
    head += [f"<th>{METRIC_LABELS[m]} (Gy)</th>" for m in TABLE_METRICS] + ["</tr>"]
    rows = []
    for name, metrics in r.metrics.items():
        cells = [f"<td class='name'><b>{_e(name)}</b></td><td>{_num(r.volumes_cc[name], '.1f')}</td>"]
        for m in TABLE_METRICS:
            c = metrics.get(m)
            cells.append("<td></td>" if c is None else
                         f"<td data-metric='{_e(name)} {METRIC_LABELS[m]}'>{_num(c.prediction)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    dvh = f"<table id='metrics-{pid}' class='metrics structure-metrics'>{''.join(head)}{''.join(rows)}</table>"
    ind = ["<tr><th class='name'>Quantity</th><th>predicted</th></tr>"]
    ind += [f"<tr><td class='name'>{_e(name)}</td><td data-metric='{_e(name)}'>{_num(c.prediction, '.3f')}</td></tr>"
            for name, c in r.indices.items()]
    indices = f"<table id='indices-{pid}' class='metrics indices'>{''.join(ind)}</table>"
    return dvh, indices


def _metric_table(r: PatientReport) -> tuple[str, str]:
    if not r.has_reference:
        return _prediction_tables(r)
    pid = _e(r.patient_id)
    top = ["<tr><th class='name' rowspan='2'>Structure</th><th rowspan='2'>Volume (cc)</th>"]
    top += [f"<th colspan='3'>{METRIC_LABELS[m]} (Gy)</th>" for m in TABLE_METRICS]
    sub = ["<tr>"] + ["<th>ref</th><th>pred</th><th>&Delta;</th>" for _ in TABLE_METRICS] + ["</tr>"]
    rows = []
    for name, metrics in r.metrics.items():
        cells = [f"<td class='name'><b>{_e(name)}</b></td><td>{_num(r.volumes_cc[name], '.1f')}</td>"]
        for m in TABLE_METRICS:
            c = metrics.get(m)
            if c is None:
                cells.append("<td></td><td></td><td></td>")
                continue
            cls = "fail" if c.fails else "delta"
            cells.append(f"<td>{_num(c.reference)}</td><td>{_num(c.prediction)}</td>"
                         f"<td class='{cls}' data-metric='{_e(name)} {METRIC_LABELS[m]}'>{_delta(c.delta)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    dvh = (f"<table id='metrics-{pid}' class='metrics structure-metrics'>"
           f"{''.join(top)}</tr>{''.join(sub)}{''.join(rows)}</table>")
    ind = ["<tr><th class='name'>Quantity</th><th>reference</th><th>predicted</th><th>&Delta;</th></tr>",
           f"<tr><td class='name'>Dose score (Gy)</td><td></td><td></td><td>{_num(r.dose_score, '.3f')}</td></tr>",
           f"<tr><td class='name'>DVH score (Gy)</td><td></td><td></td><td>{_num(r.dvh_score, '.3f')}</td></tr>"]
    for name, c in r.indices.items():
        cls = "fail" if c.fails else "delta"
        ind.append(f"<tr><td class='name'>{_e(name)}</td><td>{_num(c.reference, '.3f')}</td>"
                   f"<td>{_num(c.prediction, '.3f')}</td>"
                   f"<td class='{cls}' data-metric='{_e(name)}'>{_delta(c.delta, '+.3f')}</td></tr>")
    if r.gamma is not None:
        cls = "fail" if r.gamma_fails else "ok"
        ind.append(f"<tr><td class='name'>Gamma pass rate 3%/3 mm (%)</td><td></td><td></td>"
                   f"<td class='{cls}' data-metric='gamma'>{_num(r.gamma, '.1f')}</td></tr>")
    indices = f"<table id='indices-{pid}' class='metrics indices'>{''.join(ind)}</table>"
    return dvh, indices


def patient_section(r: PatientReport, slices_uri: str, dvh_uri: str, estimate: str = "", plan: str = "") -> str:
    pid = _e(r.patient_id)
    dvh_table, indices = _metric_table(r)
    fails = r.failures()
    if not r.has_reference:
        verdict = "<p class='note no-reference'>No reference dose: values are the prediction's.</p>"
        kind, shown, footer = "patient prediction-only", "predicted dose", ""
    else:
        verdict = (f"<p class='note'><span class='legend-fail'>{len(fails)} failing</span>: "
                   f"{_e(', '.join(fails))}</p>" if fails else "<p class='note'>No failing criterion.</p>")
        kind, shown = "patient", "reference, predicted and difference dose"
        footer = "<p class='note'>&Delta; = predicted - reference.</p>"
    return (
        f"<section id='{pid}' class='{kind}'><h2>{pid} "
        f"<span class='note'>prescription {r.prescription_gy:g} Gy &middot; "
        f"<a href='#cohort'>back to the cohort</a></span></h2>{verdict}"
        "<h3>Dose through the target centroid</h3>"
        f"<img id='slices-{pid}' class='slice-img' alt='{pid}: {shown}, "
        f"axial, coronal and sagittal' src='{slices_uri}'>"
        f"<h3>Dose-volume histograms</h3><img id='dvh-{pid}' class='dvh-plot' alt='{pid}: DVH' src='{dvh_uri}'>"
        f"{estimate}"
        f"<h3>Indices</h3>{indices}<h3>DVH metrics per structure</h3>{dvh_table}"
        f"{footer}{plan}</section>"
    )

