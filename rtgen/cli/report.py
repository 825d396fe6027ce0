"""`rtgen report`: one self-contained HTML page comparing predicted and reference doses."""

from __future__ import annotations

from pathlib import Path

import typer

from rtgen.cli.app import aliases_option, app, dicom_options, out, preflight, rtdose_option, user_errors


@app.command()
@user_errors
def report(
    pred: Path = typer.Option(..., "--pred", help="Predictions: pt_N.csv (submission format) or pt_N.nii.gz."),
    ref: Path = typer.Option(..., "--ref", help="Reference split folder or patient (with CT and dose)."),
    out_html: Path = typer.Option(Path("rtgen-out/report.html"), "--out", help="The HTML file to write."),
    gamma: bool = typer.Option(False, "--gamma", help="Also compute the 3%/3 mm global gamma pass rate (slower)."),
    aliases: Path | None = aliases_option("references"),
    dose: list[Path] | None = rtdose_option(),
):
    """Slices with dose colourwash and isodoses, DVHs and metric tables per patient, and a cohort summary.
    A prediction with a DVH estimate beside it (pt_N_dvh.csv) also gets each structure's predicted DVH
    with its bands shaded, and its structures whose band is wide flagged."""
    preflight(output_files=[out_html], inputs=[aliases])  # an unwritable --out fails in a second, before any heavy import
    names = dicom_options(aliases, dose, [ref])
    import time

    from rtgen.data.sources.dicom.names import using_aliases
    from rtgen.evaluation.report import write_report

    t0 = time.perf_counter()
    with using_aliases(names):  # the references' ROI names
        path = write_report(pred, ref, out_html, gamma=gamma)
    size_mb = path.stat().st_size / 1e6
    out.print(f"report written to [bold]{path}[/] ({size_mb:.1f} MB, {time.perf_counter() - t0:.0f} s)")
