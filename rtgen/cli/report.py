"""`rtgen report`: one self-contained HTML page comparing predicted and reference doses."""

from __future__ import annotations

from pathlib import Path

import typer

from rtgen.cli.app import DOSE_HELP, app, dose_option, out, preflight, user_errors


@app.command()
@user_errors
def report(
    pred: Path = typer.Option(..., "--pred", help="Predictions: pt_N.csv (submission format) or pt_N.nii.gz."),
    ref: Path = typer.Option(..., "--ref", help="Reference split folder or patient (with CT and dose)."),
    out_html: Path = typer.Option(Path("rtgen-out/report.html"), "--out", help="The HTML file to write."),
    gamma: bool = typer.Option(False, "--gamma", help="Also compute the 3%/3 mm global gamma pass rate (slower)."),
    aliases: Path | None = typer.Option(None, "--aliases", help="DICOM references: a JSON/YAML file {rtgen structure: [ROI names]} extending the built-in table of ROI names (e.g. {PTV70: [Volume1]})."),
    dose: list[Path] | None = typer.Option(None, "--dose", help=DOSE_HELP),
):
    """Slices with dose colourwash and isodoses, DVHs and metric tables per patient, and a cohort summary."""
    preflight(output_files=[out_html], inputs=[aliases])  # an unwritable --out fails in a second, before any heavy import
    dose_option(dose, [ref])
    import time

    from rtgen.data.sources.dicom.names import load_aliases, using_aliases

    names = load_aliases(aliases)
    from rtgen.evaluation.report import write_report

    t0 = time.perf_counter()
    with using_aliases(names):  # the references' ROI names
        path = write_report(pred, ref, out_html, gamma=gamma)
    size_mb = path.stat().st_size / 1e6
    out.print(f"report written to [bold]{path}[/] ({size_mb:.1f} MB, {time.perf_counter() - t0:.0f} s)")
