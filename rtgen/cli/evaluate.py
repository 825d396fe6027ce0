"""`rtgen evaluate`: the OpenKBP scores of a folder of predictions."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from rtgen.cli.app import Batch, aliases_option, app, dicom_options, out, preflight, rtdose_option, user_errors


@app.command()
@user_errors
def evaluate(
    pred: Path = typer.Option(..., "--pred", help="Predictions: pt_N.csv (submission format) or pt_N.nii.gz (doses), or <patient>.nii.gz synthetic MR images."),
    ref: Path = typer.Option(..., "--ref", help="Reference split folder: patients with dose.csv, or CT/MR pairs (then synthetic MR images are scored on each MR's grid: SSIM, PSNR, MSE; registered pairs, raw ones that rtgen predict registered, or MRs alone)."),
    out_dir: Path | None = typer.Option(None, "--out", help="Write metrics.json, per_patient.csv and DVH figures here."),
    gamma: bool = typer.Option(False, "--gamma", help="Also compute the 3%/3 mm global gamma pass rate (slower)."),
    scorecard: bool = typer.Option(False, "--scorecard", help="Also score each prediction (and reference plan) on the clinical head-and-neck SIB scorecard, print a table per patient, and add the scorecard totals and the GDP-HMM MAE (body = possible dose mask, 5 Gy threshold) to --out."),
    scorecard_file: Path | None = typer.Option(None, "--scorecard-template", help="A scorecard JSON (Scorecard.to_dict form) to use instead of the built-in HN-SIB template; implies --scorecard."),
    criteria: bool = typer.Option(False, "--criteria", help="Also judge each prediction (and reference plan) on clinical criteria (default: OpenKBP-Opt's: OAR D0.1cc and mean-dose limits, each PTV's D99 >= 90 % of its prescription), print the share met, and write it to --out (metrics.json, per_patient.csv, criteria.csv)."),
    criteria_file: Path | None = typer.Option(None, "--criteria-file", help="A criteria file (JSON, or YAML by its .yaml/.yml suffix; see the evaluation docs) to use instead of the default set; implies --criteria."),
    aliases: Path | None = aliases_option("references"),
    dose: list[Path] | None = rtdose_option(),
):
    """OpenKBP dose and DVH scores, per-metric errors and HI, exactly as the challenge computes them.
    Beside a prediction, a voxel spread (pt_N_std.nii.gz) is related to the error (Pearson, Spearman,
    mean |error| by decile of spread) and a DVH estimate (pt_N_dvh.csv) gets the coverage and mean
    width of its bands. A patient whose prediction or reference is missing or bad is reported and
    skipped; exit 1 if any."""
    preflight(outputs=[out_dir], inputs=[aliases, criteria_file])  # an unwritable --out fails in a second, before any heavy import
    names = dicom_options(aliases, dose, [ref])
    import contextlib

    from rtgen.core.atomic import output_dir
    from rtgen.data.sources import find_patients
    from rtgen.data.sources.dicom.names import using_aliases
    from rtgen.evaluation import evaluate_folders
    from rtgen.evaluation.image_folders import has_mr_references

    card = None
    if scorecard or scorecard_file is not None:  # read before any scoring: a bad template fails at once
        from rtgen.dosimetry.scorecard import Scorecard

        card = Scorecard.from_json(scorecard_file) if scorecard_file is not None else Scorecard.default_hn_sib()
    judge = None
    if criteria or criteria_file is not None:  # read before any scoring: a bad file fails at once
        from rtgen.dosimetry.criteria import CriteriaSet, default_criteria

        judge = CriteriaSet.from_file(criteria_file) if criteria_file is not None else default_criteria()
    if has_mr_references(ref):  # CT/MR pairs: synthetic MR against the real one
        if card is not None or judge is not None:
            from rtgen.core.errors import DataError

            raise DataError(ref, f"{'--scorecard' if card is not None else '--criteria'} scores doses; this folder "
                                 "holds CT/MR image pairs")
        return _evaluate_images(pred, ref, out_dir)
    n = len(find_patients(ref))
    batch = Batch("patients", n)
    room = output_dir(out_dir, n * FIGURE_BYTES) if out_dir is not None else contextlib.nullcontext()
    with room:  # an unwritable --out fails here, before any scoring
        with using_aliases(names):  # the references' ROI names
            result = evaluate_folders(pred, ref, out_dir, gamma=gamma, on_failure=batch.record, scorecard=card,
                                      criteria=judge)
        print_evaluation(result)
        if card is not None:
            print_scorecards(result)
        if judge is not None:
            print_criteria(result)
        if out_dir is not None:
            out.print(f"metrics.json, per_patient.csv and DVH figures written to [bold]{out_dir}[/]")
    batch.finish("evaluated")


FIGURE_BYTES = 300_000
"""About one DVH figure and one row of tables per patient, for the free-space check."""


def print_evaluation(result) -> None:
    s = result.summary()
    table = Table(title=f"OpenKBP evaluation ({s['n_patients']} patients)", title_justify="left")
    table.add_column("metric")
    table.add_column("value (Gy)", justify="right")
    table.add_row("[bold]dose score[/]", f"[bold]{s['dose_score']:.4f}[/]")
    table.add_row("[bold]DVH score[/]", f"[bold]{s['dvh_score']:.4f}[/]")
    for m, v in s["dvh_metric_errors"].items():
        table.add_row(f"  |error| {m}", f"{v:.4f}")
    for t, v in s["hi_abs_error"].items():
        table.add_row(f"  |error| HI {t} (unitless)", f"{v:.4f}")
    if "uncertainty_error_correlation_mean" in s:
        table.add_row("uncertainty vs |error| correlation", f"{s['uncertainty_error_correlation_mean']:.3f}")
    if "uncertainty_error_rank_correlation_mean" in s:
        table.add_row("uncertainty vs |error| rank correlation (Spearman)",
                      f"{s['uncertainty_error_rank_correlation_mean']:.3f}")
    if "gamma_pass_rate_mean" in s:
        table.add_row("gamma pass rate 3%/3mm (%)", f"{s['gamma_pass_rate_mean']:.2f}")
    if "gdp_hmm_mae" in s:
        table.add_row("GDP-HMM MAE (possible dose mask, either dose > 5 Gy)", f"{s['gdp_hmm_mae']:.4f}")
    out.print(table)
    for line in spread_and_band_lines(s):
        out.print(line, highlight=False)


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f} %"


def _width(x: float, unit: str) -> str:
    return "-" if x != x else f"{x:.2f} {unit}"


def spread_and_band_lines(s: dict) -> list[str]:
    """The short lines under the table: |error| by decile of predicted std, and each band level's coverage."""
    lines = []
    deciles = s.get("error_by_uncertainty_decile")
    if deciles and deciles["mean_abs_error_gy"]:
        edges = deciles["std_edges_gy"]
        lines.append("mean |error| by decile of predicted std (Gy, lowest std first): "
                     + " ".join(f"{v:.2f}" for v in deciles["mean_abs_error_gy"])
                     + f"  (std {edges[0]:.2f} to {edges[-1]:.2f} Gy, {deciles['voxels']} voxels)")
    bands = s.get("dvh_bands")
    if bands:
        for level, c in bands["levels"].items():
            lines.append(f"DVH estimate {level} % band ({bands['patients']} patients): {_pct(c['coverage'])} of "
                         f"{c['cases']} reference values inside (DVH metrics {_pct(c['coverage_gy'])}, curve points "
                         f"{_pct(c['coverage_pct'])}); mean width {_width(c['mean_width_gy'], 'Gy')}, "
                         f"{_width(c['mean_width_pct'], '%')}")
    return lines


def _num(x: float | None, unit: str) -> str:
    return "absent" if x is None else f"{x:.2f} {unit}"


def print_scorecards(result) -> None:
    """One table per patient: each criterion's value and points for the prediction and the reference plan."""
    for pid, sc in result.scorecard.items():
        ref = result.scorecard_ref.get(pid)
        table = Table(title=f"{pid}: scorecard {sc.template}", title_justify="left")
        for col in ("structure", "metric", "predicted", "points", "reference", "points "):
            table.add_column(col, justify="left" if col in ("structure", "metric") else "right")
        for i, row in enumerate(sc.rows):
            r = ref.rows[i] if ref is not None else None
            metric = row.metric + (f" (x{row.scale:.3g} Rx)" if row.scale != 1.0 else "")
            if row.status != "scored":
                table.add_row(row.structure, metric, "[dim]absent[/]", f"[dim]-/{row.max_points:g}[/]", "", "")
                continue
            hard = " [red]![/]" if row.hard and row.violation > 0 else ""
            table.add_row(row.structure, metric, _num(row.value, row.unit) + hard, f"{row.points:.2f}/{row.max_points:g}",
                          _num(r.value, r.unit) if r else "", f"{r.points:.2f}/{r.max_points:g}" if r else "")
        table.add_row("[bold]total[/]", "", f"[bold]{sc.fraction:.1%}[/]", f"[bold]{sc.total:.2f}/{sc.max_total:g}[/]",
                      f"[bold]{ref.fraction:.1%}[/]" if ref else "",
                      f"[bold]{ref.total:.2f}/{ref.max_total:g}[/]" if ref else "")
        out.print(table)
        if sc.absent:
            out.print(f"  {pid}: not scored (structure absent): {', '.join(sc.absent)}; the maximum excludes them")
        if any(r.hard and r.violation > 0 for r in sc.rows):
            out.print(f"  {pid}: [red]![/] = a hard limit of the scorecard is violated")


def print_criteria(result) -> None:
    """One table: each criterion's verdict per patient for the dose scored (and the reference plan), and the
    share met."""
    s = result.criteria_summary()
    pids = list(result.criteria)
    table = Table(title=f"Clinical criteria ({s['set']}): prediction / reference plan", title_justify="left")
    table.add_column("criterion")
    for pid in pids:
        table.add_column(pid, justify="center")
    table.add_column("share met", justify="right")
    mark = lambda m: "[dim]-[/]" if m is None else ("[green]met[/]" if m else "[red]not met[/]")
    for i, (label, c) in enumerate(s["per_criterion"].items()):
        cells = []
        for pid in pids:
            ref = result.criteria_ref.get(pid)
            cells.append(mark(result.criteria[pid].rows[i].met) + (f" / {mark(ref.rows[i].met)}" if ref else ""))
        share = "-" if c["share_met"] is None else f"{c['share_met']:.0%}"
        if c["reference_share_met"] is not None:
            share += f" / {c['reference_share_met']:.0%}"
        table.add_row(label, *cells, share)
    totals = [f"{result.criteria[p].n_met}/{result.criteria[p].n_applicable}" for p in pids]
    ref_total = f" / {s['reference_share_met']:.1%}" if s["reference_share_met"] is not None else ""
    table.add_row("[bold]met / applicable[/]", *totals, f"[bold]{s['share_met']:.1%}{ref_total}[/]")
    out.print(table)


def _evaluate_images(pred: Path, ref: Path, out_dir: Path | None) -> None:
    import contextlib

    from rtgen.core.atomic import output_dir
    from rtgen.data.sources.image_pairs import find_pairs
    from rtgen.evaluation.image_folders import evaluate_image_folders

    n = len(find_pairs(ref))
    batch = Batch("patients", n)
    with output_dir(out_dir, n * 1000) if out_dir is not None else contextlib.nullcontext():
        result = evaluate_image_folders(pred, ref, out_dir, on_failure=batch.record)
        table = Table(title=f"Synthetic MR vs reference ({len(result.per_patient)} patients; 0.5/99.5 percentile "
                            "normalisation to 0-255)", title_justify="left")
        for col in ("patient", "SSIM %", "PSNR dB", "MSE", "SSIM body %", "PSNR body dB"):
            table.add_column(col, justify="left" if col == "patient" else "right")
        rows = list(result.per_patient.items()) + [("[bold]mean[/]", result.summary())]
        for pid, r in rows:
            table.add_row(pid, f"{r['ssim']:.2f}", f"{r['psnr']:.2f}", f"{r['mse']:.1f}", f"{r['ssim_body']:.2f}",
                          f"{r['psnr_body']:.2f}")
        out.print(table)
        if out_dir is not None:
            out.print(f"metrics.json and per_patient.csv written to [bold]{out_dir}[/]")
    batch.finish("evaluated")
