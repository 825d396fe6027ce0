"""The figures of a dose report (`rtgen report`), as data URIs for a self-contained page.

Why the DVH is SVG from matplotlib and not plotly: plotly would need its 4 MB plotly.js inlined in
every report and JavaScript to draw anything; an SVG (vector, crisp at any zoom, ~100 kB) draws
with scripting disabled, prints, and keeps the dependency list unchanged. Slices are PNG: they are
raster data (CT, dose grids), where PNG is both smaller and exact.

- Slices: axial, coronal and sagittal slices through the centroid of the highest-prescription PTV
  present (else of the possible dose mask): CT (window -160..240 HU), structure contours, a dose
  colourwash transparent below 10 % of the prescription and isodose lines at 95/80/50 % of the
  prescription (the highest PTV prescription present, 70 Gy when no PTV is), for the reference,
  the prediction and their difference (prediction - reference, diverging map, symmetric at
  +-15 % of the prescription so patients compare at a glance). Array axes follow the OpenKBP
  convention (rtgen/core/structures.py): axis 0 runs anterior to posterior, axis 1 patient right to
  left, axis 2 (axial) superior to inferior; images are shown in radiological convention (patient
  right on the viewer's left, anterior up, superior up) with the true voxel aspect from `spacing`.
- DVH: the cumulative DVH of every structure, reference solid, prediction dashed.

With a plan's dose (`rtgen report --plan`), the slices show reference, prediction and plan side by
side with the same colourwash and isodoses, and the DVHs add the plan dotted.

A patient without a reference dose gets one "Predicted" column of slices and the prediction's
DVHs (solid).
"""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patheffects
from matplotlib.lines import Line2D

from rtgen.core.structures import PRESCRIPTION_GY, STRUCTURES, TARGETS
from rtgen.data.records import Patient
from rtgen.dosimetry import cumulative_dvh
from rtgen.evaluation.plots import COLOURS
from rtgen.evaluation.report_numbers import prescription_gy

# ---------------------------------------------------------------- display settings

CT_WINDOW_HU = (-160.0, 240.0)  # soft-tissue window (level 40, width 400)
WASH_THRESHOLD = 0.10  # of the prescription: no colourwash below
ISODOSE_LEVELS = ((0.95, "-", 1.6), (0.80, "--", 1.3), (0.50, ":", 1.3))  # fraction, line style, width
ISODOSE_OUTLINE = [patheffects.withStroke(linewidth=2.6, foreground="black")]  # white lines show on any colour
DIFF_RANGE = 0.15  # of the prescription: the difference map spans +- this
DVH_BIN_GY = 0.25


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


def slice_figure(patient: Patient, prediction: np.ndarray, plan: np.ndarray | None = None) -> str:
    """A PNG data URI: rows axial, coronal, sagittal; columns reference, predicted, difference
    (only "Predicted" when the patient has no reference dose). With `plan` (a plan's dose on the
    patient's grid) the columns are reference, predicted and plan instead, all three with the same
    colourwash and isodoses (predicted and plan when the patient has no reference dose).

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

    # columns: (title, volume, a dose (True) or the difference (False))
    if plan is not None:
        columns = ([("Reference", ref, True)] if has_ref else []) + [
            ("Predicted", pred, True), ("Plan", np.asarray(plan, np.float32)[box], True)]
    elif has_ref:
        columns = [("Reference", ref, True), ("Predicted", pred, True), ("Predicted \u2212 reference", pred - ref, False)]
    else:
        columns = [("Predicted", pred, True)]
    ncols = len(columns)
    n_dose = sum(is_dose for _, _, is_dose in columns)
    # the columns across the page, the legend below; or one column with the legend on its right
    legend_ncol = min(7 if ncols > 2 else 4, len(structures) + len(ISODOSE_LEVELS))
    if ncols > 1:
        fig_w = 4.0 * ncols
        legend_rows = -(-(len(structures) + len(ISODOSE_LEVELS)) // legend_ncol)
        left, right, below = 0.84 / fig_w, 1 - 0.24 / fig_w, max(1.2, 0.7 + 0.25 * legend_rows)
        panel_w = fig_w * 0.86 / ncols
    else:
        fig_w, left, right, below = 8.0, 0.105, 0.60, 0.7
        panel_w = fig_w * (right - left)
    fig_h = panel_w * sum(heights) / width + below + 1.0
    fig = plt.figure(figsize=(fig_w, fig_h), facecolor="white")
    gs = fig.add_gridspec(4, ncols, height_ratios=heights + [0.035 * sum(heights)], left=left, right=right,
                          top=1 - 0.4 / fig_h, bottom=below / fig_h, wspace=0.03, hspace=0.06)
    wash_cmap = plt.get_cmap("turbo")
    diff_cmap = plt.get_cmap("RdBu_r")
    if has_ref:
        ref_views, pred_views = _views(ref, centre), _views(pred, centre)
    ct_views = _views(ct, centre)
    mask_views = {n: _views(m, centre) for n, m in structures.items()}
    dose_im = diff_im = None
    for c, (label, vol, is_dose) in enumerate(columns):
        for v, (img, ext) in enumerate(zip(_views(vol, centre), extents)):
            ax = fig.add_subplot(gs[v, c])
            ax.imshow(ct_views[v], cmap="gray", vmin=CT_WINDOW_HU[0], vmax=CT_WINDOW_HU[1], extent=ext,
                      interpolation="bilinear")
            if is_dose:
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
    cax = fig.add_subplot(gs[3, 0:n_dose])
    cb = fig.colorbar(dose_im, cax=cax, orientation="horizontal")
    cb.solids.set_alpha(1)
    cb.set_label(f"Dose (Gy); no colour below {WASH_THRESHOLD:.0%} of {rx:g} Gy", fontsize=10)
    if diff_im is not None:
        cax = fig.add_subplot(gs[3, 2])
        cb = fig.colorbar(diff_im, cax=cax, orientation="horizontal")
        cb.solids.set_alpha(1)
        cb.set_label("Predicted \u2212 reference (Gy)", fontsize=10)
    handles = [Line2D([], [], color=COLOURS[n], lw=2.5) for n in structures]
    labels = list(structures)
    handles += [Line2D([], [], color="white", ls=ls, lw=lw, path_effects=ISODOSE_OUTLINE) for _, ls, lw in ISODOSE_LEVELS]
    labels += [f"{frac:.0%} isodose ({frac * rx:.1f} Gy)" for frac, _, _ in ISODOSE_LEVELS]
    if ncols > 1:
        fig.legend(handles, labels, loc="lower center", ncol=legend_ncol, fontsize=9.5, frameon=False,
                   bbox_to_anchor=(0.5, 0.0))
    else:
        fig.legend(handles, labels, loc="center left", ncol=1, fontsize=9.5, frameon=False,
                   bbox_to_anchor=(right + 0.02, 0.5))
    return _png_data_uri(fig, dpi=90)


def dvh_figure(patient: Patient, prediction: np.ndarray, plan: np.ndarray | None = None) -> str:
    """Cumulative DVHs, reference solid and prediction dashed (the prediction solid when the patient
    has no reference dose), as an SVG data URI. With `plan` (a plan's dose): reference solid,
    prediction dashed, plan dotted, whether or not the patient has a reference dose."""
    pred = np.asarray(prediction, np.float64)
    ref = None if patient.dose is None else np.asarray(patient.dose, np.float64)
    if plan is not None:
        curves = ([(ref, "-", "reference")] if ref is not None else []) + [
            (pred, "--", "predicted"), (np.asarray(plan, np.float64), ":", "plan")]
    elif ref is None:
        curves = [(pred, "-", "predicted")]
    else:
        curves = [(ref, "-", "reference"), (pred, "--", "predicted")]
    top = float(max(d.max() for d, _, _ in curves)) + 1.0
    fig, ax = plt.subplots(figsize=(9.5, 5.0))
    for name in STRUCTURES:
        mask = patient.structures.get(name)
        if mask is None or not mask.any():
            continue
        for i, (dose, ls, _) in enumerate(curves):
            x, y = cumulative_dvh(dose[mask], bin_width=DVH_BIN_GY, max_dose=top)
            ax.plot(x, y, color=COLOURS[name], lw=1.8 if ls == ":" else 1.6, ls=ls, label=name if i == 0 else None)
    ax.set(xlabel="Dose (Gy)", ylabel="Volume (%)", xlim=(0, top), ylim=(0, 101))
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if len(curves) == 1:
        ax.set_title(f"{patient.id}: DVH of the prediction (no reference dose)", fontsize=11)
    else:
        styles = {"-": "solid", "--": "dashed", ":": "dotted"}
        ax.set_title(f"{patient.id}: DVH, " + ", ".join(f"{what} {styles[ls]}" for _, ls, what in curves), fontsize=11)
        handles += [Line2D([], [], color="k", lw=1.6, ls=ls) for _, ls, _ in curves]
        labels += [what for _, _, what in curves]
    ax.legend(handles, labels, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9, frameon=False)
    fig.tight_layout()
    return _svg_data_uri(fig)


# ---------------------------------------------------------------- the DVH estimate

BAND_ALPHAS = (0.45, 0.2, 0.1)  # the narrowest band (80 %) darkest, each wider one lighter
ESTIMATE_COLUMNS = 4


def band_levels_of(rows: list[dict]) -> list[str]:
    """The band levels of DVH estimate rows as their column suffixes ("80", "95"), narrowest first."""
    from rtgen.evaluation.dose import band_levels

    return [f"{p * 100:g}" for p in band_levels(rows)]


def dvh_estimate_figure(patient: Patient, prediction: np.ndarray, rows: list[dict]) -> str:
    """One panel per structure of a DVH estimate (rows of `<id>_dvh.csv`): the predicted DVH (solid,
    the structure's colour) with its bands shaded from the curve points (V_<x>Gy rows; the 80 % band
    darker, the 95 % band lighter), the target D_<x> metrics as horizontal error bars at x % of the
    volume, and the reference DVH (black) over it when the patient has a reference dose. A structure
    with a wide band is titled in red with a "wide" marker. An SVG data URI."""
    from matplotlib.patches import Patch

    pred = np.asarray(prediction, np.float64)
    ref = None if patient.dose is None else np.asarray(patient.dose, np.float64)
    levels = band_levels_of(rows)
    names = [n for n in STRUCTURES if any(r["structure"] == n for r in rows)
             and patient.structures.get(n) is not None and patient.structures[n].any()]
    top = float(max(pred.max(), ref.max() if ref is not None else 0.0)) + 1.0
    ncols = min(ESTIMATE_COLUMNS, max(1, len(names)))
    nrows = max(1, -(-len(names) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.7 * ncols + 0.4, 2.3 * nrows + 0.7), squeeze=False,
                             sharex=True, sharey=True)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        mask = patient.structures[name]
        colour = COLOURS[name]
        mine = [r for r in rows if r["structure"] == name]
        curve = sorted((r for r in mine if r["metric"].startswith("V_")), key=lambda r: float(r["metric"][2:-2]))
        if curve:
            x = [float(r["metric"][2:-2]) for r in curve]
            for i in reversed(range(len(levels))):  # the widest band first, the narrowest over it
                lv = levels[i]
                ax.fill_between(x, [r[f"lower_{lv}"] for r in curve], [r[f"upper_{lv}"] for r in curve],
                                color=colour, alpha=BAND_ALPHAS[min(i, len(BAND_ALPHAS) - 1)], lw=0)
        dx, dy = cumulative_dvh(pred[mask], bin_width=DVH_BIN_GY, max_dose=top)
        ax.plot(dx, dy, color=colour, lw=1.5)
        if ref is not None:
            rx, ry = cumulative_dvh(ref[mask], bin_width=DVH_BIN_GY, max_dose=top)
            ax.plot(rx, ry, color="black", lw=1.0)
        for r in mine:  # D_<x>: dose at x % of the volume, a point of the cumulative DVH at height x
            m = r["metric"]
            if not (m.startswith("D_") and m != "D_0.1_cc"):
                continue
            y = float(m[2:])
            for i in reversed(range(len(levels))):
                lv = levels[i]
                lo, hi = r[f"lower_{lv}"], r[f"upper_{lv}"]
                ax.plot([lo, hi], [y, y], color=colour, alpha=min(1.0, 2 * BAND_ALPHAS[min(i, len(BAND_ALPHAS) - 1)]),
                        lw=3.5 if i == 0 else 1.2, solid_capstyle="butt",
                        marker=None if i == 0 else "|", ms=6)
            ax.plot([r["predicted"]], [y], "o", color=colour, ms=3)
        wide = any(r.get("wide") for r in mine)
        ax.set_title(f"{name}  \u25b2 wide" if wide else name, fontsize=10, color="#b00020" if wide else "black",
                     fontweight="bold" if wide else "normal")
        ax.set(xlim=(0, top), ylim=(0, 101))
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("Dose (Gy)", fontsize=9)
    for ax in axes[:, 0]:
        ax.set_ylabel("Volume (%)", fontsize=9)
    handles = [Line2D([], [], color="grey", lw=1.5)] + [
        Patch(color="grey", alpha=BAND_ALPHAS[min(i, len(BAND_ALPHAS) - 1)], lw=0) for i in range(len(levels))]
    labels = ["predicted DVH"] + [f"{lv} % band" for lv in levels]
    if ref is not None:
        handles.append(Line2D([], [], color="black", lw=1.0))
        labels.append("reference DVH")
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.suptitle(f"{patient.id}: DVH estimate, predicted DVH with its bands", fontsize=11)
    fig.tight_layout(rect=(0, 0.35 / (2.3 * nrows + 0.7), 1, 1))
    return _svg_data_uri(fig)
