"""`rtgen register`: each CT registered onto its MR grid (rigid, then B-spline), with QA per pair."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from rtgen.cli.app import Batch, app, out, preflight, user_errors
from rtgen.core.errors import DataError, RtgenError


class Stage(str, Enum):
    rigid = "rigid"
    bspline = "bspline"


PAIR_BYTES = 4_000_000
"""About one registered pair (CT, MR copy, masks, PNG), for the free-space check."""


@app.command()
@user_errors
def register(
    data_dir: Path = typer.Argument(..., help="A patient folder, or a folder of them (split/site subfolders are "
                                              "mirrored). Each holds ct.nii.gz and mr_t1.nii.gz (tumour masks "
                                              "ct_mask, mr_t1_mask) or SynthRAD's ct.nii.gz, mr.nii.gz "
                                              "(body mask.nii.gz)."),
    out_dir: Path = typer.Argument(..., help="Output folder: <patient>/{ct,mr,ct_mask,mr_mask,body_mask}.nii.gz, "
                                             "checkerboard.png, *.tfm, and registration_qa.json."),
    stage: Stage = typer.Option(Stage.bspline, "--stage", help="rigid only, or rigid then B-spline."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="SimpleITK threads (default: all cores)."),
    min_dice: float = typer.Option(0.85, "--min-dice", min=0.0, max=1.0,
                                   help="QA: least body-outline Dice after registration."),
    min_tumour_dice: float = typer.Option(0.8, "--min-tumour-dice", min=0.0, max=1.0,
                                          help="QA: least tumour Dice after registration (pairs with both masks)."),
):
    """Register each CT onto its MR grid: a rigid step from the physical (and tumour-centroid) alignment,
    checked for implausible turns and shifts, then a coarse B-spline; Mattes MI inside the body. QA per
    pair: body and tumour Dice, bone-edge distance and MI before and after, and a checkerboard. A pair
    that fails QA is reported and not written (its checkerboard goes to OUT/rejected/); exit 1 if any
    failed. Transforms map MR physical points to CT ones (resample the CT with them)."""
    preflight(outputs=[out_dir])  # an unwritable OUT fails in a second, before SimpleITK is imported
    import SimpleITK as sitk
    from tqdm.auto import tqdm

    from rtgen.core.atomic import output_dir
    from rtgen.data.registration import QAThresholds, RegistrationSettings, find_pairs
    from rtgen.data.registration.run import QA_FILE, PatientReport, register_patient, write_qa

    data, dest = data_dir.resolve(), out_dir.resolve()
    if dest == data or data in dest.parents:
        raise RtgenError(f"{out_dir}: the output folder must not lie inside the data folder {data_dir} "
                         "(its registered pairs would be read as patients on the next run)")
    pairs = find_pairs(data_dir)
    if threads:
        sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(threads)
    settings = RegistrationSettings(stage=stage.value, threads=threads)
    thresholds = QAThresholds(min_dice=min_dice, min_tumour_dice=min_tumour_dice)
    with output_dir(out_dir, len(pairs) * PAIR_BYTES):  # an unwritable OUT fails here, before any registration
        batch = Batch("patients", len(pairs))
        reports: list[PatientReport] = []
        for files in tqdm(pairs, desc="registering", unit="patient"):
            name = files.rel.as_posix()
            report = batch.run(name, lambda f=files: register_patient(f, out_dir, settings, thresholds))
            if report is None:
                reports.append(PatientReport(name, "error", error=batch.failed.get(name)))
                continue
            reports.append(report)
            if report.qa is not None and not report.qa.passed:
                batch.record(name, DataError(files.folder, "registration failed QA: " + "; ".join(report.qa.reasons)
                                             + f" (checkerboard: {out_dir / report.output})"))
        write_qa(out_dir / QA_FILE, data_dir, reports, settings, thresholds)
        print_reports(reports)
        out.print(f"QA of every pair written to [bold]{out_dir / QA_FILE}[/]")
        batch.finish(f"registered -> {out_dir}")


def _pair(before: float | None, after: float | None, fmt: str) -> str:
    if before is None or after is None:
        return "-"
    return f"{before:{fmt}}→{after:{fmt}}"


def print_reports(reports) -> None:
    from rich import box
    from rich.table import Table

    # compact (no rules, one space between columns): it must fit 80 columns when piped to a log
    table = Table(title="registration QA, before→after", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, padding=(0, 1), collapse_padding=True)
    for col, justify in (("patient", "left"), ("body Dice", "right"), ("bone mm", "right"), ("MI", "right"),
                         ("tumour", "right"), ("s", "right"), ("status", "left")):
        table.add_column(col, justify=justify, no_wrap=True)
    for r in reports:
        q = r.qa
        style = "green" if r.status == "ok" else "red"
        table.add_row(r.patient, _pair(q and q.dice_before, q and q.dice_after, ".3f"),
                      _pair(q and q.bone_mm_before, q and q.bone_mm_after, ".1f"),
                      _pair(q and q.mi_before, q and q.mi_after, ".2f"),
                      _pair(q and q.tumour_dice_before, q and q.tumour_dice_after, ".2f"),
                      f"{r.seconds:.0f}", f"[{style}]{r.status}[/]")
    out.print(table)
