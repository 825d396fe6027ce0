"""`rtgen inspect`: what a physicist reads first about a patient."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich import box
from rich.table import Table

from rtgen.cli.app import Batch, aliases_option, app, dicom_options, out, preflight, rtdose_option, user_errors


@app.command()
@user_errors
def inspect(
    patients: list[Path] | None = typer.Argument(
        None, help="Patient folders (OpenKBP CSV, NIfTI) or .npz caches, or split folders. Default: the bundled examples."
    ),
    out_dir: Path = typer.Option(Path("rtgen-out/inspect"), "--out", help="Where DVH figures and summary.json go."),
    as_json: bool = typer.Option(False, "--json", help="Print the summaries as JSON instead of tables."),
    aliases: Path | None = aliases_option("patients"),
    dose: list[Path] | None = rtdose_option(),
):
    """Summarise patients: structures and volumes, spacing, dose statistics, plan DVH metrics; plot DVHs.
    A patient that fails to load is reported and skipped; exit 1 if any failed."""
    preflight(outputs=[out_dir], inputs=[aliases])  # an unwritable --out fails in a second, before any heavy import
    names = dicom_options(aliases, dose, patients or [])
    from rtgen.core.atomic import atomic_write_text, output_dir, staged_dir
    from rtgen.data.examples import example_patients_dir
    from rtgen.data.sources import load_patient, patients_in
    from rtgen.evaluation.plots import plot_dvh
    from rtgen.evaluation.summary import summarize

    paths: list[Path] = []
    for p in patients or [example_patients_dir()]:
        paths += patients_in(p)
    summaries = []
    batch = Batch("patients", len(paths))

    def inspect_one(path: Path, stage: Path) -> None:
        patient = load_patient(path, aliases=names)
        s = summarize(patient)
        if patient.dose is not None:
            s["dvh_figure"] = str(out_dir / f"dvh_{patient.id}.png")
            plot_dvh(stage / f"dvh_{patient.id}.png", patient.structures, patient.dose, title=f"{patient.id}: plan DVH")
        summaries.append(s)
        if not as_json:
            _print_summary(s)

    with output_dir(out_dir, len(paths) * 300_000):  # an unwritable --out fails now, before any reading
        with staged_dir(out_dir) as stage:  # the good patients' outputs appear together, or not at all
            for path in paths:
                batch.run(path.name, lambda p=path: inspect_one(p, stage))
            if summaries:
                atomic_write_text(stage / "summary.json", json.dumps(summaries, indent=2) + "\n")
        if as_json:
            print(json.dumps(summaries, indent=2))
        elif summaries:
            out.print(f"figures and summary.json written to [bold]{out_dir}[/]")
        batch.finish("inspected", quiet=as_json)


def _print_summary(s: dict) -> None:
    from rtgen.evaluation.summary import SUMMARY_COLUMNS, summary_rows

    sp = " x ".join(f"{v:.3g}" for v in s["spacing_mm"])
    head = f"[bold]{s['patient']}[/]  spacing {sp} mm  grid {'x'.join(map(str, s['grid']))}"
    if "dose" in s:
        head += f"  dose max {s['dose']['max_gy']:.2f} Gy, mean in possible-dose mask {s['dose']['mean_in_possible_dose_mask_gy']:.2f} Gy"
    table = Table(title=head, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for c in SUMMARY_COLUMNS:
        table.add_column(c, justify="left" if c == "structure" else "right", no_wrap=True)
    for row in summary_rows(s):
        table.add_row(*row)
    out.print(table)
