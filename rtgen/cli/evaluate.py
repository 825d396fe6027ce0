"""`rtgen evaluate`: the OpenKBP scores of a folder of predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from rtgen.cli.app import Batch, app, out, user_errors


@app.command()
@user_errors
def evaluate(
    pred: Path = typer.Option(..., "--pred", help="Predictions: pt_N.csv (submission format) or pt_N.nii.gz (doses), or <patient>.nii.gz synthetic MR images."),
    ref: Path = typer.Option(..., "--ref", help="Reference split folder: patients with dose.csv, or registered CT/MR pairs (then synthetic MR images are scored: SSIM, PSNR, MSE)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Write metrics.json, per_patient.csv and DVH figures here."),
    gamma: bool = typer.Option(False, "--gamma", help="Also compute the 3%/3 mm global gamma pass rate (slower)."),
):
    """OpenKBP dose and DVH scores, per-metric errors and HI, exactly as the challenge computes them.
    A patient whose prediction or reference is missing or bad is reported and skipped; exit 1 if any."""
    import contextlib

    from rtgen.core.atomic import output_dir
    from rtgen.data.sources import find_patients
    from rtgen.evaluation import evaluate_folders
    from rtgen.evaluation.image_folders import has_mr_references

    if has_mr_references(ref):  # CT/MR pairs: synthetic MR against the real one
        return _evaluate_images(pred, ref, out_dir)
    n = len(find_patients(ref))
    batch = Batch("patients", n)
    preflight = output_dir(out_dir, n * FIGURE_BYTES) if out_dir is not None else contextlib.nullcontext()
    with preflight:  # an unwritable --out fails here, before any scoring
        result = evaluate_folders(pred, ref, out_dir, gamma=gamma, on_failure=batch.record)
        print_evaluation(result)
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
    if "gamma_pass_rate_mean" in s:
        table.add_row("gamma pass rate 3%/3mm (%)", f"{s['gamma_pass_rate_mean']:.2f}")
    out.print(table)


def _evaluate_images(pred: Path, ref: Path, out_dir: Optional[Path]) -> None:
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
