"""`rtgen convert`: patient data between formats."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from rtgen.cli.app import Batch, aliases_option, convert_app, dicom_options, out, preflight, rtdose_option, user_errors


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
    preflight(outputs=[dest])  # an unwritable DEST fails in a second, before any heavy import
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


class FromDicomFormat(str, Enum):
    nifti = "nifti"
    npz = "npz"
    openkbp = "openkbp"


@convert_app.command("to-dicom")
@user_errors
def convert_to_dicom(
    patient: Path = typer.Argument(..., help="One patient in any layout rtgen reads (OpenKBP CSV folder, NIfTI folder, .npz)."),
    dest: Path = typer.Argument(..., help="Output folder (created): CT/CT_0001.dcm ..., RTSTRUCT.dcm, RTDOSE.dcm."),
    patient_name: str | None = typer.Option(None, "--patient-name", help="DICOM PatientName (default: the patient id)."),
    dose_grid: float = typer.Option(2.5, "--dose-grid", min=0, help="The RTDOSE's in-plane spacing in mm (the CT's where coarser; frames on the CT's slices), over the possible dose mask's and the structures' bounding box plus --dose-margin; 0 writes the CT's whole grid."),
    dose_margin: float = typer.Option(10.0, "--dose-margin", min=0, help="mm around the possible dose mask and the structures that the RTDOSE covers."),
    anonymize: bool = typer.Option(False, "--anonymize", help="Fresh identifiers: PatientName and PatientID ANON-<8 hex digits>, new study, series and frame of reference UIDs shared by the files written, the patient's dates and sex removed; PatientIdentityRemoved YES."),
):
    """Write a patient as DICOM RT: a CT series, an RTSTRUCT (every structure and the possible dose mask
    as the External ROI) and an RTDOSE if the patient has a dose, with fresh UIDs. For sharing with a
    planning system or viewer, and for testing DICOM pipelines. All or nothing."""
    preflight(outputs=[dest])
    from rtgen.core.errors import RtgenError
    from rtgen.data.sources import load_patient
    from rtgen.data.sources.dicom import write_dicom_patient
    from rtgen.data.sources.dicom.identity import valid_pn

    if anonymize and patient_name is not None:
        raise RtgenError("--anonymize writes a fresh PatientName; leave out --patient-name")
    if patient_name is not None and not valid_pn(patient_name):
        raise RtgenError(f"--patient-name {patient_name!r} is not a valid DICOM person name (at most 64 characters "
                         "a group, no backslash or control character)")
    p = load_patient(patient)
    write_dicom_patient(p, dest, patient_name=patient_name, dose_spacing=dose_grid or None, dose_margin=dose_margin,
                        anonymize=anonymize)
    n = len(list((dest / "CT").glob("*.dcm")))
    if anonymize:
        import pydicom

        new_id = pydicom.dcmread(dest / "RTSTRUCT.dcm", stop_before_pixels=True).PatientID
        out.print(f"{p.id}: anonymized as {new_id}")
    out.print(f"{p.id}: {n} CT slices, RTSTRUCT ({len(p.structures)} structures + External)"
              f"{', RTDOSE' if p.dose is not None else ''} -> {dest}")


@convert_app.command("from-dicom")
@user_errors
def convert_from_dicom(
    src: Path = typer.Argument(..., help="A DICOM patient folder (CT series, RTSTRUCT, optional RTDOSE; subfolders are searched), or a cohort: one subfolder per patient, or every patient's files in one folder (sorted by PatientID and study)."),
    dest: Path = typer.Argument(..., help="Output: a patient folder (nifti, openkbp) or a .npz file (npz); for a cohort, a folder with one such entry per patient."),
    fmt: FromDicomFormat = typer.Option(FromDicomFormat.nifti, "--format", help="nifti, npz, or openkbp (CSV; 128^3 grids only)."),
    aliases: Path | None = aliases_option("patients"),
    dose: list[Path] | None = rtdose_option(),
):
    """Read a DICOM patient (CT in HU, RTSTRUCT contours rasterised with holes, RTDOSE resampled onto the CT)
    and write it in an rtgen layout, printing the ROIs matched and not matched, the prescription and the
    dose read. Over a cohort, a patient that fails is reported and skipped; exit 1 if any failed."""
    npz_file = fmt is FromDicomFormat.npz and dest.suffix == ".npz"
    preflight(**({"output_files": [dest]} if npz_file else {"outputs": [dest]}), inputs=[src, aliases])
    names = dicom_options(aliases, dose, [src])  # a bad alias file fails before the export is read
    from rtgen.core.errors import DataError
    from rtgen.data.sources.dicom.cohort import dicom_cohort

    entries = dicom_cohort(src)
    if len(entries) == 1 and entries[0].error is None:  # one patient: DEST is that patient, as always
        _from_dicom_one(entries[0], dest, fmt, names)
        return
    if npz_file:
        raise DataError(dest, f"{src} holds {len(entries)} patients: give a folder for their .npz files")
    from rtgen.core.atomic import output_dir

    batch = Batch("patients", len(entries))
    out.print(f"{src}: {len(entries)} patients")
    with output_dir(dest):
        for entry in entries:
            target = dest / (f"{entry.name}.npz" if fmt is FromDicomFormat.npz else entry.name)
            batch.run(entry.name, lambda e=entry, t=target: _from_dicom_one(e, t, fmt, names))
    batch.finish(f"converted -> {dest} ({fmt.value})")


def _from_dicom_one(entry, dest: Path, fmt: FromDicomFormat, aliases) -> None:
    """Read one DICOM patient of a cohort entry, write it to `dest` and print what the reading found."""
    from rtgen.core.atomic import staged_dir
    from rtgen.core.errors import DataError
    from rtgen.core.structures import GRID_SHAPE
    from rtgen.data.sources.dicom import BODY, prescription, read_dicom_case
    from rtgen.data.sources.nifti import write_nifti_patient
    from rtgen.data.sources.npz import write_npz
    from rtgen.data.sources.openkbp import write_patient

    if entry.error is not None:
        raise entry.error
    case = read_dicom_case(entry.folder, aliases=aliases, patient_id=entry.name, files=entry.files)
    p = case.patient
    if fmt is FromDicomFormat.nifti:
        write_nifti_patient(p, dest)
    elif fmt is FromDicomFormat.npz:
        write_npz(p, dest)
    else:
        if p.grid != GRID_SHAPE:
            raise DataError(entry.folder, f"grid {p.grid}: the OpenKBP CSV layout holds only {GRID_SHAPE} volumes; "
                                          "use --format nifti or npz")
        with staged_dir(dest) as stage:
            write_patient(p, stage)
    out.print(f"[bold]{p.id}[/]: grid {p.grid}, spacing {tuple(round(s, 3) for s in p.spacing)} mm -> {dest} "
              f"({fmt.value})", highlight=False, soft_wrap=True)
    if case.rtstruct is None:
        rois = "no RTSTRUCT"
    else:
        rois = ", ".join(f"{'body' if n == BODY else n} <- {r!r}" for n, r in case.matched.items()) or "none"
        rois += f"; not matched: {', '.join(repr(u) for u in case.unmatched) or 'none'}"
    rx = prescription(case)
    out.print(f"  ROIs matched: {rois}", markup=False, highlight=False, soft_wrap=True)
    out.print("  prescription: " + (", ".join(f"{t} {gy:g} Gy" for t, gy in rx.items()) or "none (no PTV recognised)"),
              markup=False, highlight=False, soft_wrap=True)
    out.print(f"  dose: {case.dose.describe() if case.dose is not None else 'none found'}", markup=False,
              highlight=False, soft_wrap=True)
