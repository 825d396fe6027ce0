"""`rtgen report`: one self-contained HTML page comparing predicted and reference doses."""

from __future__ import annotations

from pathlib import Path

import typer

from rtgen.cli.app import aliases_option, app, dicom_options, out, preflight, rtdose_option, user_errors
from rtgen.core.errors import ConfigError


@app.command()
@user_errors
def report(
    pred: Path = typer.Option(..., "--pred", help="Predictions: pt_N.csv (submission format) or pt_N.nii.gz."),
    ref: Path = typer.Option(..., "--ref", help="Reference split folder or patient (with CT and dose)."),
    out_html: Path = typer.Option(Path("rtgen-out/report.html"), "--out", help="The HTML file to write."),
    gamma: bool = typer.Option(False, "--gamma", help="Also compute the 3%/3 mm global gamma pass rate (slower)."),
    plan: Path | None = typer.Option(None, "--plan", help="A folder that rtgen plan wrote: each patient's delivered dose is shown beside the prediction and the reference, with the clinical criteria each meets and the plan's row of plans.csv."),
    criteria_file: Path | None = typer.Option(None, "--criteria-file", help="A criteria file (JSON, or YAML by its .yaml/.yml suffix; see the evaluation docs) to judge the plans on instead of OpenKBP-Opt's; needs --plan."),
    aliases: Path | None = aliases_option("references"),
    dose: list[Path] | None = rtdose_option(),
):
    """Slices with dose colourwash and isodoses, DVHs and metric tables per patient, and a cohort summary.
    A prediction with a DVH estimate beside it (pt_N_dvh.csv) also gets each structure's predicted DVH
    with its bands shaded, and its structures whose band is wide flagged. With --plan, each patient also
    gets its plan beside the prediction and the reference, and the criteria each meets."""
    preflight(output_files=[out_html], inputs=[aliases, criteria_file])  # an unwritable --out fails in a second, before any heavy import
    if criteria_file is not None and plan is None:
        raise ConfigError("--criteria-file", "judges the plans: give the folder rtgen plan wrote with --plan")
    names = dicom_options(aliases, dose, [ref])
    import time

    from rtgen.data.sources.dicom.names import using_aliases
    from rtgen.evaluation.report import write_report

    criteria = None
    if criteria_file is not None:  # read before anything else: a bad file fails at once
        from rtgen.dosimetry.criteria import CriteriaSet

        criteria = CriteriaSet.from_file(criteria_file)
    t0 = time.perf_counter()
    with using_aliases(names):  # the references' ROI names
        path = write_report(pred, ref, out_html, gamma=gamma, plan_dir=plan, criteria=criteria)
    size_mb = path.stat().st_size / 1e6
    out.print(f"report written to [bold]{path}[/] ({size_mb:.1f} MB, {time.perf_counter() - t0:.0f} s)")
