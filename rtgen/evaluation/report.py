"""One self-contained HTML page a physicist can open, forward and archive: `rtgen report`.

Why a single file with everything inlined: a report is mailed, attached to a ticket or opened on a
clinic workstation without internet, so it must make no network request at all. The page carries
a Content-Security-Policy that forbids any load other than inline styles and ``data:`` images, so
a stray external reference would show as a browser error (the browser test checks there are none).

Why the DVH is SVG from matplotlib and not plotly: plotly would need its 4 MB plotly.js inlined in
every report and JavaScript to draw anything; an SVG (vector, crisp at any zoom, ~100 kB) draws
with scripting disabled, prints, and keeps the dependency list unchanged. Slices are PNG: they are
raster data (CT, dose grids), where PNG is both smaller and exact.

What a patient section shows:

- axial, coronal and sagittal slices through the centroid of the highest-prescription PTV present
  (else of the possible dose mask): CT (window -160..240 HU), structure contours, a dose
  colourwash transparent below 10 % of the prescription and isodose lines at 95/80/50 % of the
  prescription (the highest PTV prescription present, 70 Gy when no PTV is), for the reference,
  the prediction and their difference (prediction - reference, diverging map, symmetric at
  +-15 % of the prescription so patients compare at a glance). Array axes follow the OpenKBP
  convention (rtgen/core/structures.py): axis 0 runs anterior to posterior, axis 1 patient right to
  left, axis 2 (axial) superior to inferior; images are shown in radiological convention (patient
  right on the viewer's left, anterior up, superior up) with the true voxel aspect from `spacing`.
- the cumulative DVH of every structure, reference solid, prediction dashed;
- the metric table: OpenKBP dose and DVH scores, Dmean/D95/D99/D1 (and D0.1cc for OARs) per
  structure, HI (ICRU 83) and Paddick CI at the prescription isodose per PTV (as `rtgen inspect`
  reports them), and the 3 %/3 mm gamma pass rate when asked.

A value fails (CSS class ``fail``, red) when it breaks one of these deliberately simple criteria,
meant to point the eye, not to replace a clinical protocol (`CRITERIA` below, shown on the page):
PTV D95, D99 or D1 differs from the reference by more than 3 % of that PTV's prescription; an OAR's
Dmean or D0.1cc by more than 3 Gy; HI by more than 0.05; Paddick CI by more than 0.10; gamma pass
rate below 90 %.

A patient without a reference dose (``patient.dose is None``: a new patient, predicted straight
from a DICOM export by ``rtgen predict --report``) gets a prediction-only section: one "Predicted"
column of slices, the prediction's DVHs (solid), its metric values without any comparison or
highlighting; the cohort table shows a dash for its scores, and the cohort scores are those of
the patients that have a reference.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patheffects
from matplotlib.lines import Line2D

from rtgen import __version__
from rtgen.core.atomic import atomic_write_text
from rtgen.core.errors import DataError, OutputError
from rtgen.core.structures import OARS, PRESCRIPTION_GY, STRUCTURES, TARGETS
from rtgen.data.records import Patient
from rtgen.data.sources import load_patient, patients_in
from rtgen.dosimetry import (
    OpenKBPScores,
    cumulative_dvh,
    dose_at_volume_cc,
    dose_at_volume_percent,
    gamma_pass_rate,
    homogeneity_index,
    paddick_conformity_index,
)
from rtgen.evaluation.dose import find_prediction, read_prediction
from rtgen.evaluation.plots import COLOURS

# ---------------------------------------------------------------- criteria (documented on the page)

PTV_TOLERANCE_FRACTION = 0.03  # of the PTV's prescription, for D95, D99 and D1
OAR_TOLERANCE_GY = 3.0  # for Dmean and D0.1cc
HI_TOLERANCE = 0.05
CI_TOLERANCE = 0.10
GAMMA_MIN_PERCENT = 90.0
CRITERIA = (
    f"PTV D95, D99, D1: |predicted - reference| > {PTV_TOLERANCE_FRACTION:.0%} of the PTV's prescription",
    f"OAR Dmean, D0.1cc: |predicted - reference| > {OAR_TOLERANCE_GY:g} Gy",
    f"HI (ICRU 83): |predicted - reference| > {HI_TOLERANCE:g}",
    f"Paddick CI at the prescription isodose: |predicted - reference| > {CI_TOLERANCE:.2f}",
    f"gamma pass rate (3 %/3 mm global, 10 % cutoff) < {GAMMA_MIN_PERCENT:g} %",
)

# ---------------------------------------------------------------- display settings

CT_WINDOW_HU = (-160.0, 240.0)  # soft-tissue window (level 40, width 400)
WASH_THRESHOLD = 0.10  # of the prescription: no colourwash below
ISODOSE_LEVELS = ((0.95, "-", 1.6), (0.80, "--", 1.3), (0.50, ":", 1.3))  # fraction, line style, width
ISODOSE_OUTLINE = [patheffects.withStroke(linewidth=2.6, foreground="black")]  # white lines show on any colour
DIFF_RANGE = 0.15  # of the prescription: the difference map spans +- this
DVH_BIN_GY = 0.25
TABLE_METRICS = ("mean", "D_95", "D_99", "D_1", "D_0.1_cc")
METRIC_LABELS = {"mean": "Dmean", "D_95": "D95", "D_99": "D99", "D_1": "D1", "D_0.1_cc": "D0.1cc"}


# ---------------------------------------------------------------- numbers


@dataclass
class Check:
    """One compared quantity: reference, prediction, and whether the difference fails a criterion.

    `reference` is None for a patient without a reference dose (nothing to compare, nothing fails)."""

    reference: float | None
    prediction: float
    fails: bool = False

    @property
    def delta(self) -> float:
        return float("nan") if self.reference is None else self.prediction - self.reference


@dataclass
class PatientReport:
    """Everything the page says about one patient (numbers only; the figures are rendered apart)."""

    patient_id: str
    prescription_gy: float
    dose_score: float | None  # None: the patient has no reference dose
    dvh_score: float | None
    volumes_cc: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, dict[str, Check]] = field(default_factory=dict)  # structure -> metric -> check
    indices: dict[str, Check] = field(default_factory=dict)  # "HI PTV70", "CI PTV70"
    gamma: float | None = None

    @property
    def has_reference(self) -> bool:
        return self.dose_score is not None

    @property
    def gamma_fails(self) -> bool:
        return self.gamma is not None and not (self.gamma >= GAMMA_MIN_PERCENT)

    def failures(self) -> list[str]:
        """Human-readable names of the failing quantities, in table order."""
        out = [f"{s} {METRIC_LABELS[m]}" for s, ms in self.metrics.items() for m, c in ms.items() if c.fails]
        out += [name for name, c in self.indices.items() if c.fails]
        if self.gamma_fails:
            out.append("gamma")
        return out


def prescription_gy(patient: Patient) -> float:
    """The highest PTV prescription the patient has (70 Gy when it has no PTV)."""
    present = [PRESCRIPTION_GY[t] for t in TARGETS if t in patient.structures and patient.structures[t].any()]
    return max(present) if present else PRESCRIPTION_GY["PTV70"]


def _metric_value(dose: np.ndarray, metric: str, voxel_volume_mm3: float) -> float:
    """One TABLE_METRICS value of the dose inside a structure (`dose` holds that structure's voxels)."""
    if metric == "D_0.1_cc":
        return dose_at_volume_cc(dose, 0.1, voxel_volume_mm3)
    if metric == "mean":
        return float(dose.mean())
    return dose_at_volume_percent(dose, float(metric[2:]))


def patient_numbers(patient: Patient, prediction: np.ndarray, scores: OpenKBPScores,
                    gamma: bool = False) -> PatientReport:
    """Scores, per-structure metrics, HI, CI (and gamma) of one patient; adds it to `scores`.

    A patient without a reference dose gets the prediction's values only: no score, no gamma,
    nothing fails, and `scores` is left as it is."""
    ref = None if patient.dose is None else np.asarray(patient.dose, np.float64)
    pred = np.asarray(prediction, np.float64)
    if ref is None:
        rep = PatientReport(patient.id, prescription_gy(patient), None, None)
    else:
        s = scores.add(patient.id, ref, pred, patient.possible_dose_mask, patient.structures,
                       patient.voxel_volume_mm3)
        errors = list(s.dvh_errors.values())
        rep = PatientReport(patient.id, prescription_gy(patient), s.dose_error,
                            float(np.mean(errors)) if errors else float("nan"))
    for name in STRUCTURES:
        mask = patient.structures.get(name)
        if mask is None or not mask.any():
            continue
        rep.volumes_cc[name] = patient.volume_cc(name)
        p = pred[mask]
        r = None if ref is None else ref[mask]
        row: dict[str, Check] = {}
        for metric in TABLE_METRICS:
            if metric == "D_0.1_cc" and name not in OARS:
                continue
            pv = _metric_value(p, metric, patient.voxel_volume_mm3)
            if r is None:
                row[metric] = Check(None, pv)
                continue
            rv = _metric_value(r, metric, patient.voxel_volume_mm3)
            if name in TARGETS:
                fails = metric != "mean" and abs(pv - rv) > PTV_TOLERANCE_FRACTION * PRESCRIPTION_GY[name]
            else:
                fails = metric in ("mean", "D_0.1_cc") and abs(pv - rv) > OAR_TOLERANCE_GY
            row[metric] = Check(rv, pv, bool(fails))
        rep.metrics[name] = row
        if name in TARGETS:
            iso = PRESCRIPTION_GY[name]
            hi_p, ci_p = homogeneity_index(pred, mask), paddick_conformity_index(pred, mask, iso)
            if ref is None:
                rep.indices[f"HI {name}"], rep.indices[f"CI {name}"] = Check(None, hi_p), Check(None, ci_p)
                continue
            hi_r, ci_r = homogeneity_index(ref, mask), paddick_conformity_index(ref, mask, iso)
            rep.indices[f"HI {name}"] = Check(hi_r, hi_p, not abs(hi_p - hi_r) <= HI_TOLERANCE)
            rep.indices[f"CI {name}"] = Check(ci_r, ci_p, not abs(ci_p - ci_r) <= CI_TOLERANCE)
    if gamma and ref is not None:
        rep.gamma = gamma_pass_rate(ref, pred, patient.spacing)
    return rep


# ---------------------------------------------------------------- figures


def _png_data_uri(fig, dpi: int = 100) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _svg_data_uri(fig) -> str:
    buf = io.BytesIO()
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "rtgen"}):
        fig.savefig(buf, format="svg")
    plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def slice_centre(patient: Patient) -> tuple[int, int, int]:
    """Voxel index of the centroid of the highest-prescription PTV present, else of the possible dose mask."""
    for t in sorted(TARGETS, key=PRESCRIPTION_GY.get, reverse=True):
        mask = patient.structures.get(t)
        if mask is not None and mask.any():
            return tuple(round(float(c)) for c in np.argwhere(mask).mean(axis=0))  # type: ignore[return-value]
    if patient.possible_dose_mask.any():
        return tuple(round(float(c)) for c in np.argwhere(patient.possible_dose_mask).mean(axis=0))  # type: ignore[return-value]
    return tuple(n // 2 for n in patient.grid)  # type: ignore[return-value]


def _crop_box(patient: Patient, margin: int = 6) -> tuple[slice, ...]:
    """The possible dose mask's bounding box plus a margin: all the dose, a rim of anatomy, no empty air.

    (A CT threshold would not do: OpenKBP CTs carry stray bright voxels far from the body.)"""
    mask = patient.possible_dose_mask
    if not mask.any():
        return tuple(slice(0, n) for n in patient.grid)
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0)
    return tuple(slice(max(0, int(a) - margin), min(n, int(b) + margin + 1)) for a, b, n in zip(lo, hi, patient.grid))


def _views(volume: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    """Axial, coronal, sagittal 2D images (rows down, columns right) in radiological display."""
    i, j, k = centre
    return [volume[:, :, k], volume[i, :, :].T, volume[:, j, :].T]


def _extents(shape: tuple[int, int, int], spacing) -> list[tuple[float, float, float, float]]:
    sx, sy, sz = (float(s) for s in spacing)
    nx, ny, nz = shape
    # (left, right, bottom, top) in mm with row 0 at the top: the true voxel aspect ratio
    return [(0, ny * sy, nx * sx, 0), (0, ny * sy, nz * sz, 0), (0, nx * sx, nz * sz, 0)]


VIEW_NAMES = ("Axial", "Coronal", "Sagittal")


def slice_figure(patient: Patient, prediction: np.ndarray) -> str:
    """A PNG data URI: rows axial, coronal, sagittal; columns reference, predicted, difference
    (only "Predicted" when the patient has no reference dose).

    Columns share one view per row, so panels in a row have the same size and compare side by side."""
    rx = prescription_gy(patient)
    has_ref = patient.dose is not None
    box = _crop_box(patient)
    centre_full = slice_centre(patient)
    centre = tuple(int(np.clip(c - b.start, 0, b.stop - b.start - 1)) for c, b in zip(centre_full, box))
    ct = patient.ct[box] if patient.ct is not None else np.full([b.stop - b.start for b in box], -1000, np.int16)
    pred = np.asarray(prediction, np.float32)[box]
    ref = np.asarray(patient.dose, np.float32)[box] if has_ref else None
    structures = {n: m[box] for n, m in patient.structures.items() if m.any()}
    extents = _extents(pred.shape, patient.spacing)
    heights = [e[2] for e in extents]
    width = max(e[1] for e in extents)

    # three columns across the page, the legend below; or one column with the legend on its right
    if has_ref:
        ncols, fig_w, left, right, below = 3, 12.0, 0.07, 0.98, 1.2
        panel_w = fig_w * 0.86 / 3
    else:
        ncols, fig_w, left, right, below = 1, 8.0, 0.105, 0.60, 0.7
        panel_w = fig_w * (right - left)
    fig_h = panel_w * sum(heights) / width + below + 1.0
    fig = plt.figure(figsize=(fig_w, fig_h), facecolor="white")
    gs = fig.add_gridspec(4, ncols, height_ratios=heights + [0.035 * sum(heights)], left=left, right=right,
                          top=1 - 0.4 / fig_h, bottom=below / fig_h, wspace=0.03, hspace=0.06)
    wash_cmap = plt.get_cmap("turbo")
    diff_cmap = plt.get_cmap("RdBu_r")
    if has_ref:
        columns = (("Reference", ref), ("Predicted", pred), ("Predicted \u2212 reference", pred - ref))
        ref_views, pred_views = _views(ref, centre), _views(pred, centre)
    else:
        columns = (("Predicted", pred),)
    ct_views = _views(ct, centre)
    mask_views = {n: _views(m, centre) for n, m in structures.items()}
    dose_im = diff_im = None
    for c, (label, vol) in enumerate(columns):
        for v, (img, ext) in enumerate(zip(_views(vol, centre), extents)):
            ax = fig.add_subplot(gs[v, c])
            ax.imshow(ct_views[v], cmap="gray", vmin=CT_WINDOW_HU[0], vmax=CT_WINDOW_HU[1], extent=ext,
                      interpolation="bilinear")
            if c < 2:  # the dose columns (the difference is the third)
                washed = np.ma.masked_less(img, WASH_THRESHOLD * rx)
                dose_im = ax.imshow(washed, cmap=wash_cmap, vmin=0, vmax=1.1 * rx, alpha=0.45, extent=ext,
                                    interpolation="nearest")
                for frac, ls, lw in ISODOSE_LEVELS:
                    if img.max() >= frac * rx:
                        iso = ax.contour(img, levels=[frac * rx], colors="white", linestyles=ls, linewidths=lw,
                                         extent=ext, origin="upper")
                        iso.set(path_effects=ISODOSE_OUTLINE)
            else:
                dose_any = np.maximum(ref_views[v], pred_views[v])
                shown = np.ma.masked_where(dose_any < WASH_THRESHOLD * rx, img)
                diff_im = ax.imshow(shown, cmap=diff_cmap, vmin=-DIFF_RANGE * rx, vmax=DIFF_RANGE * rx,
                                    alpha=0.85, extent=ext, interpolation="nearest")
            for name, views in mask_views.items():
                if views[v].any():
                    ax.contour(views[v].astype(np.float32), levels=[0.5], colors=[COLOURS[name]], linewidths=1.1,
                               extent=ext, origin="upper")
            ax.set_xlim(ext[0], ext[0] + width)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_facecolor("black")
            for spine in ax.spines.values():
                spine.set_visible(False)
            if v == 0:
                ax.set_title(label, fontsize=13, fontweight="bold")
            if c == 0:
                idx = (centre_full[2], centre_full[0], centre_full[1])[v]
                ax.set_ylabel(f"{VIEW_NAMES[v]}\n(slice {idx})", fontsize=11)
    cax = fig.add_subplot(gs[3, 0:2] if has_ref else gs[3, 0])
    cb = fig.colorbar(dose_im, cax=cax, orientation="horizontal")
    cb.solids.set_alpha(1)
    cb.set_label(f"Dose (Gy); no colour below {WASH_THRESHOLD:.0%} of {rx:g} Gy", fontsize=10)
    if has_ref:
        cax = fig.add_subplot(gs[3, 2])
        cb = fig.colorbar(diff_im, cax=cax, orientation="horizontal")
        cb.solids.set_alpha(1)
        cb.set_label("Predicted \u2212 reference (Gy)", fontsize=10)
    handles = [Line2D([], [], color=COLOURS[n], lw=2.5) for n in structures]
    labels = list(structures)
    handles += [Line2D([], [], color="white", ls=ls, lw=lw, path_effects=ISODOSE_OUTLINE) for _, ls, lw in ISODOSE_LEVELS]
    labels += [f"{frac:.0%} isodose ({frac * rx:.1f} Gy)" for frac, _, _ in ISODOSE_LEVELS]
    if has_ref:
        fig.legend(handles, labels, loc="lower center", ncol=min(7, len(labels)), fontsize=9.5, frameon=False,
                   bbox_to_anchor=(0.5, 0.0))
    else:
        fig.legend(handles, labels, loc="center left", ncol=1, fontsize=9.5, frameon=False,
                   bbox_to_anchor=(right + 0.02, 0.5))
    return _png_data_uri(fig, dpi=90)


def dvh_figure(patient: Patient, prediction: np.ndarray) -> str:
    """Cumulative DVHs, reference solid and prediction dashed (the prediction solid when the patient
    has no reference dose), as an SVG data URI."""
    pred = np.asarray(prediction, np.float64)
    if patient.dose is None:
        curves, top = ((pred, "-", True),), float(pred.max()) + 1.0
    else:
        ref = np.asarray(patient.dose, np.float64)
        curves, top = ((ref, "-", True), (pred, "--", False)), float(max(ref.max(), pred.max())) + 1.0
    fig, ax = plt.subplots(figsize=(9.5, 5.0))
    for name in STRUCTURES:
        mask = patient.structures.get(name)
        if mask is None or not mask.any():
            continue
        for dose, ls, labelled in curves:
            x, y = cumulative_dvh(dose[mask], bin_width=DVH_BIN_GY, max_dose=top)
            ax.plot(x, y, color=COLOURS[name], lw=1.6, ls=ls, label=name if labelled else None)
    ax.set(xlabel="Dose (Gy)", ylabel="Volume (%)", xlim=(0, top), ylim=(0, 101))
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if patient.dose is None:
        ax.set_title(f"{patient.id}: DVH of the prediction (no reference dose)", fontsize=11)
    else:
        ax.set_title(f"{patient.id}: DVH, reference solid, predicted dashed", fontsize=11)
        handles += [Line2D([], [], color="k", lw=1.6), Line2D([], [], color="k", lw=1.6, ls="--")]
        labels += ["reference", "predicted"]
    ax.legend(handles, labels, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9, frameon=False)
    fig.tight_layout()
    return _svg_data_uri(fig)


# ---------------------------------------------------------------- HTML

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


def cohort_section(reports: list[PatientReport], scores: OpenKBPScores, gamma: bool) -> str:
    """The batch summary: cohort scores (over the patients with a reference dose) and one linked row per patient."""
    head = ["<tr><th class='name'>Patient</th><th>Dose score (Gy)</th><th>DVH score (Gy)</th>"]
    if gamma:
        head.append("<th>Gamma 3%/3 mm (%)</th>")
    head.append("<th class='name'>Failing criteria</th></tr>")
    rows = []
    n_fail = 0
    compared = [r for r in reports if r.has_reference]
    for r in reports:
        if not r.has_reference:
            cells = [f"<td class='name'><a href='#{_e(r.patient_id)}'>{_e(r.patient_id)}</a></td>",
                     f"<td class='no-reference'>{NO_REFERENCE}</td>" * (3 if gamma else 2),
                     "<td class='name no-reference'>no reference dose</td>"]
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
        mean.append(f"<td class='name'>{n_fail} of {len(compared)} patients with a failing criterion</td></tr>")
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
        f"{highlighting}</section>"
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


def patient_section(r: PatientReport, slices_uri: str, dvh_uri: str) -> str:
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
        f"<h3>Indices</h3>{indices}<h3>DVH metrics per structure</h3>{dvh_table}"
        f"{footer}</section>"
    )


class ReportPage:
    """A report built one patient at a time: `add` draws the patient's figures at once and keeps only
    its HTML, so a caller that has each patient in memory anyway (`rtgen predict --report`) needs
    neither to keep the volumes nor to read them again. `html()` or `write()` when all are added."""

    def __init__(self, gamma: bool = False, title: str = "rtgen dose report", sources: dict[str, str] | None = None):
        self.gamma, self.title, self.sources = gamma, title, sources
        self.scores = OpenKBPScores()
        self.reports: list[PatientReport] = []
        self.sections: list[str] = []

    def __len__(self) -> int:
        return len(self.reports)

    def add(self, patient: Patient, prediction: np.ndarray) -> PatientReport:
        """Add one patient (its `dose` the reference, or None: a prediction-only section) and its prediction."""
        if np.shape(prediction) != tuple(patient.grid):
            raise DataError(patient.id, f"predicted dose shape {np.shape(prediction)} differs from the "
                                        f"reference grid {tuple(patient.grid)}")
        rep = patient_numbers(patient, prediction, self.scores, gamma=self.gamma)
        section = patient_section(rep, slice_figure(patient, prediction), dvh_figure(patient, prediction))
        self.reports.append(rep)
        self.sections.append(section)
        return rep

    def html(self) -> str:
        reports = self.reports
        if not reports:
            raise DataError("report", "no patients to report on")
        when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        src = "".join(f"<p>{_e(k)}: {_e(v)}</p>" for k, v in (self.sources or {}).items())
        nav = " ".join(f"<a href='#{_e(r.patient_id)}'>{_e(r.patient_id)}</a>" for r in reports)
        return (
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            "<link rel='icon' href='data:,'>"
            f"<title>{_e(self.title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{_e(self.title)}</h1>{src}<p>{len(reports)} patient(s) &middot; rtgen "
            f"{_e(__version__)} &middot; {when}</p></header><main><nav><p>Patients: {nav}</p></nav>"
            f"{cohort_section(reports, self.scores, self.gamma)}{''.join(self.sections)}</main></body></html>\n"
        )

    def write(self, out_html: str | Path) -> Path:
        """Write the page to `out_html` (atomically: the file appears only when complete)."""
        out = check_report_path(out_html)
        return _write(out, self.html())


def render_report(cases: Iterable[tuple[Patient, np.ndarray]], gamma: bool = False, title: str = "rtgen dose report",
                  sources: dict[str, str] | None = None) -> str:
    """The HTML of a report on (patient, predicted dose) pairs; the patient's dose is the reference,
    and a patient without one (`dose` None) gets a prediction-only section.

    Patients are consumed one at a time (an iterator keeps one patient's volumes in memory)."""
    page = ReportPage(gamma=gamma, title=title, sources=sources)
    for patient, prediction in cases:
        page.add(patient, prediction)
    return page.html()


def check_report_path(out_html: str | Path) -> Path:
    """Fail early, before any rendering, if `out_html` cannot become a file (nothing is created here)."""
    out = Path(out_html)
    if out.is_dir():
        raise OutputError(out, "cannot be written: it is a folder; give the report a file name such as report.html")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(out, f"cannot be written: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputError(out, f"cannot be written: no permission to write in {parent}")
            break
    return out


def _write(out: Path, text: str) -> Path:
    try:
        atomic_write_text(out, text)  # creates missing folders; raises OutputError on disk errors
    except OSError as e:
        raise OutputError(out, f"cannot be written ({e.strerror or e})") from None
    return out


def write_report_cases(cases: Iterable[tuple[Patient, np.ndarray]], out_html: str | Path, gamma: bool = False,
                       title: str = "rtgen dose report", sources: dict[str, str] | None = None) -> Path:
    """Write the report of already-loaded (patient, predicted dose) pairs; nothing is written on failure.

    A patient whose `dose` is None (no reference) gets a prediction-only section."""
    out = check_report_path(out_html)
    return _write(out, render_report(cases, gamma=gamma, title=title, sources=sources))


def write_report(pred_dir: str | Path, ref_dir: str | Path, out_html: str | Path, gamma: bool = False,
                 title: str = "rtgen dose report") -> Path:
    """Report on every reference patient of `ref_dir` (a split folder or one patient) against its
    prediction in `pred_dir`.

    Predictions are found as `rtgen evaluate` finds them (pt_N.csv, pt_N.nii.gz, pt_N/dose.csv).
    All inputs are checked before any figure is drawn; the file appears only when complete."""
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    out = check_report_path(out_html)
    if not pred_dir.is_dir():
        raise DataError(pred_dir, "prediction folder not found" if not pred_dir.exists() else "is not a folder")
    refs = patients_in(ref_dir)  # a split folder or one patient
    found = {}
    for path in refs:
        pid = path.name.removesuffix(".npz")
        found[pid] = find_prediction(pred_dir, pid)
        if found[pid] is None:
            raise DataError(pred_dir, f"no prediction for patient {pid} (expected {pid}.csv or {pid}.nii.gz)")

    def cases():
        for path in refs:
            patient = load_patient(path)
            if patient.dose is None:
                raise DataError(path, "reference patient has no dose")
            yield patient, read_prediction(found[path.name.removesuffix(".npz")], patient.grid, path,
                                          patient.possible_dose_mask)

    sources = {"predictions": str(pred_dir.resolve()), "reference": str(ref_dir.resolve())}
    return _write(out, render_report(cases(), gamma=gamma, title=title, sources=sources))
