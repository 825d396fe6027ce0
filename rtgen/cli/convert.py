"""`rtgen convert`: patient data between formats."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from rtgen.cli.app import convert_app, out, user_errors


class CacheFormat(str, Enum):
    npz = "npz"
    nifti = "nifti"


@convert_app.command("openkbp")
@user_errors
def convert_openkbp(
    src: Path = typer.Argument(..., help="A split folder of pt_* patient folders in the OpenKBP CSV layout."),
    dest: Path = typer.Argument(..., help="Output folder (created)."),
    fmt: CacheFormat = typer.Option(CacheFormat.npz, "--format", help="npz (one compressed file per patient) or nifti."),
):
    """Cache a split as compressed NumPy (or NIfTI) for fast training. All or nothing: a failure writes nothing."""
    from rtgen.core.atomic import staged_dir
    from rtgen.data.sources import PatientSplit
    from rtgen.data.sources.nifti import write_nifti_patient
    from rtgen.data.sources.npz import write_npz

    split = PatientSplit(src)
    with staged_dir(dest) as stage:
        for patient in split:
            if fmt is CacheFormat.npz:
                write_npz(patient, stage / f"{patient.id}.npz")
            else:
                write_nifti_patient(patient, stage / patient.id)
    out.print(f"{len(split)} patients -> {dest} ({fmt.value})")
