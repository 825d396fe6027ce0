"""`rtgen predict`: whole-volume predictions for a split or one patient, in any layout rtgen reads."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from rtgen.cli.app import Batch, aliases_option, app, dicom_options, out, preflight, user_errors
from rtgen.core.errors import RtgenError


class PredFormat(str, Enum):
    csv = "csv"
    nifti = "nifti"
    dicom = "dicom"  # pt_N_RTDOSE.dcm on the CT of a DICOM patient folder


@app.command()
@user_errors
def predict(
    patients: Path = typer.Option(..., "--patients", help="A split folder of patients, or one patient: an OpenKBP CSV or NIfTI folder, an .npz, or a DICOM export (CT series + RTSTRUCT)."),
    out_dir: Path = typer.Option(..., "--out", help="Where pt_N.csv (pt_N.nii.gz, or <id>_RTDOSE.dcm) predictions go."),
    model: Path | None = typer.Option(None, "--model", help="Run directory, model.safetensors (config.json beside it) or hub:NAME (a model shipped in rtgen). Default: the shipped default dose model, or for CT/MR patients (ct.nii.gz, no possible dose mask) the shipped CT -> MR model, hub:unet_sts."),
    fmt: PredFormat = typer.Option(PredFormat.csv, "--format", help="csv (OpenKBP submission), nifti, or dicom (an RTDOSE on the patient's CT frame of reference; DICOM patients only)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    tta: bool = typer.Option(False, "--tta/--no-tta", help="Average over in-plane flips (3x slower; a CT -> MR regression: its 4 flips, as predict.flip_average)."),
    batch_size: int = typer.Option(32, min=1, help="Slices per forward pass."),
    sampler: str | None = typer.Option(None, help="Diffusion models: ddpm, ddim, dpmpp or ode (default dpmpp; image models: their own); DiffKT3D: euler, heun or dpmpp (default: the model's own)."),
    steps: int = typer.Option(10, min=1, help="Diffusion models: sampling steps."),
    samples: int = typer.Option(1, min=1, help="Diffusion models: samples per patient, their mean written; a dose model also writes pt_N_std.nii.gz."),
    seed: int = typer.Option(0, help="Diffusion models: random seed (predictions are deterministic for a seed)."),
    best_of: int | None = typer.Option(None, "--best-of", min=1, help="DiffKT3D: sample N doses and keep the one with the best clinical scorecard (default: the model's own setting)."),
    target: str = typer.Option("dose", "--target", help="DiffKT3D: the modality to generate from the others (dose, ct, ptv, oar or body); a non-dose target is written as OUT/<id>_<target>.nii.gz."),
    report: bool = typer.Option(False, "--report/--no-report", help="Also write OUT/report.html: slices, DVHs and metrics of each prediction, compared with the patient's own dose when it has one."),
    dose_grid: float = typer.Option(2.5, "--dose-grid", min=0, help="--format dicom: the RTDOSE's in-plane spacing in mm (the CT's where coarser; frames on the CT's slices), over the body's bounding box plus --dose-margin; 0 writes the CT's whole grid."),
    dose_margin: float = typer.Option(10.0, "--dose-margin", min=0, help="--format dicom: mm around the body (and every ROI) that the RTDOSE covers."),
    aliases: Path | None = aliases_option("patients"),
    anonymize: bool = typer.Option(False, "--anonymize", help="--format dicom: write each patient as an anonymized DICOM RT set instead, OUT/ANON-<8 hex digits>/ (its CT series, an RTSTRUCT of the structures rtgen read and the predicted RTDOSE), with fresh identifiers shared by the three and the patient's dates and sex removed: a dose to share with its CT."),
    register: bool = typer.Option(True, "--register/--no-register", help="CT -> MR models: a patient whose MR is on another grid than its CT (not registered) has its CT registered onto the MR first, as `rtgen register` does, and its synthetic MR written on the MR's grid. --no-register synthesises on the CT's grid instead."),
):
    """Predict whole doses. A patient that fails to load is reported and skipped; exit 1 if any failed."""
    preflight(outputs=[out_dir], inputs=[patients, aliases])  # before PyTorch and the model are imported
    if anonymize and (fmt is not PredFormat.dicom or report):
        raise RtgenError("--anonymize writes anonymized DICOM RT sets: it needs --format dicom, and no --report "
                         "(the report names the patients; run rtgen report on the anonymized sets)")
    names = dicom_options(aliases)  # a bad alias file fails now, in one line
    if model is not None and str(model).startswith("hub:"):  # an unknown name lists the shipped ones, at once
        from rtgen.hub import shipped_model_dir

        shipped_model_dir(str(model)[len("hub:"):])

    from tqdm.auto import tqdm

    from rtgen.core.atomic import output_dir
    from rtgen.data.sources import load_patient, patients_in
    from rtgen.data.sources.image_pairs import find_pairs, holds_image_pairs
    from rtgen.hub import default_model, shipped_model_dir
    from rtgen.inference import load_predictor, resolve_model
    from rtgen.inference.writers import estimated_bytes, write_dose

    image_data = holds_image_pairs(patients)  # CT/MR patients: a split folder or one patient folder
    paths = find_pairs(patients) if image_data else patients_in(patients)
    if fmt is PredFormat.dicom and not anonymize:  # an anonymized set brings its own CT
        from rtgen.data.sources.dicom import is_dicom_dir

        others = [p for p in paths if not is_dicom_dir(p)]
        if others:
            raise RtgenError(f"{others[0]}: --format dicom writes an RTDOSE onto the patient's own CT series, and this "
                             "patient is not a DICOM export; use --format nifti or csv")
    with output_dir(out_dir, len(paths) * estimated_bytes(with_std=samples > 1)):  # before any model runs
        page = None
        if report:  # each patient's section is drawn once predicted: no volume is kept or read again
            from rtgen.evaluation.report import ReportPage, check_report_path

            check_report_path(out_dir / "report.html")
            page = ReportPage(title="rtgen predictions", sources={"patients": str(patients.resolve())})
        if model is None:  # the best shipped model for the data: dose, or CT -> MR for image pairs
            model = shipped_model_dir(default_model("image_regression" if image_data else "dose"))
            out.print(f"model: the shipped default, {model.name}")
        else:  # a run folder, weights file or hub:NAME (a model shipped inside rtgen, e.g. hub:diffkt3d_openkbp)
            model = resolve_model(model)
        predictor = load_predictor(model, device)
        # the options checked against the model before any patient is read (rtgen.inference.predictor)
        sampling = predictor.sampling_config(sampler, steps, samples, seed, best_of, target, cli=True)
        if predictor.output_kind == "image":
            if tta:
                predictor.task.use_flip_average()
            pairs = paths if image_data else find_pairs(patients)  # the latter: a clear error for dose patients
            return _predict_images(predictor, pairs, out_dir, batch_size, sampling, register)
        diffusion = predictor.task.stochastic
        batch = Batch("patients", len(paths))

        def predict_one(path: Path) -> None:
            patient = load_patient(path, aliases=names, require_target=target == "dose")  # no PTV: no dose
            if target != "dose":
                from rtgen.data.sources.nifti import write_nifti

                volume = predictor.task.impute(predictor.model, patient, target, sampling, predictor.device)
                write_nifti(out_dir / f"{patient.id}_{target}.nii.gz", volume, patient.spacing)
                return
            dose, std = predictor.predict_with_uncertainty(patient, batch_size, tta, sampling if diffusion else None)
            if anonymize:
                _write_anonymized(out_dir, patient, dose, dose_grid, dose_margin)
                return
            write_dose(out_dir, patient.id, dose, patient.spacing, fmt.value, std,  # std: spread of samples/boosters
                       source=path, body=patient.possible_dose_mask, dose_grid=dose_grid or None,
                       dose_margin=dose_margin)
            estimate = _write_dvh_estimate(out_dir, predictor.task, patient, dose, estimates)
            if page is not None:
                page.add(patient, dose, **({"dvh_estimate": estimate} if estimate else {}))

        estimates: dict[str, list[dict]] = {}
        for path in tqdm(paths, desc="predicting", unit="patient"):
            batch.run(path.name, lambda p=path: predict_one(p))
        if estimates:
            _write_estimate_summary(out_dir / "metrics.json", predictor, estimates)
        if page is not None and len(page):  # at least one patient predicted
            out.print(f"report written to [bold]{page.write(out_dir / 'report.html')}[/]")
        batch.finish(f"predicted -> {out_dir}")  # inside: a folder left empty by failures is removed


def _write_dvh_estimate(out_dir: Path, task, patient, dose, estimates: dict) -> list[dict] | None:
    """OUT/<id>_dvh.csv: the DVH estimate with its bands, for a model that has them (rtgen.dosimetry.bands)."""
    estimate = task.dvh_estimate(patient, dose) if hasattr(task, "dvh_estimate") else None
    if estimate is None:
        return None
    from rtgen.dosimetry.bands import write_dvh_estimate

    write_dvh_estimate(out_dir, patient.id, estimate)
    estimates[patient.id] = estimate
    wide = sorted({r["structure"] for r in estimate if r["wide"]})
    if wide:
        out.print(f"{patient.id}: wide DVH bands (uncertain) for {', '.join(wide)}")
    return estimate


def _write_estimate_summary(path: Path, predictor, estimates: dict[str, list[dict]]) -> None:
    """OUT/metrics.json: every patient's DVH estimate, and the structures whose bands are wide."""
    import json

    from rtgen.core.atomic import atomic_write_text
    from rtgen.dosimetry.bands import wide_definition

    levels = predictor.task.dvh_bands.levels
    summary = {"model": predictor.task.model_name, "band_levels": list(levels),
               "wide_means": wide_definition(f"{levels[0] * 100:g}"),
               "patients": {pid: {"wide": sorted({r["structure"] for r in rows if r["wide"]}), "dvh_estimate": rows}
                            for pid, rows in estimates.items()}}
    atomic_write_text(path, json.dumps(summary, indent=1) + "\n")


def _write_anonymized(out_dir: Path, patient, dose, dose_grid: float, dose_margin: float) -> None:
    """OUT/ANON-xxxxxxxx/: the patient's CT, structures and predicted dose as DICOM RT with fresh identifiers."""
    from dataclasses import replace

    from rtgen.data.sources.dicom import PREDICTED, CtReference, anonymized, write_dicom_patient

    ref = anonymized(CtReference.new(patient.grid, patient.spacing))
    folder = write_dicom_patient(replace(patient, dose=dose), out_dir / ref.patient_id, ref=ref, summation=PREDICTED,
                                 description="rtgen predicted dose", dose_spacing=dose_grid or None,
                                 dose_margin=dose_margin)
    out.print(f"{patient.id}: anonymized as {ref.patient_id} -> {folder}")


def _predict_images(predictor, paths: list[Path], out_dir: Path, batch_size: int, sampling, register: bool) -> None:
    """An image model (CT -> MR): OUT/<patient>.nii.gz, a synthetic MR in [0, 1] on each CT's grid (an
    unregistered pair's CT registered onto its MR first with `register`: rtgen.inference.images)."""
    from tqdm.auto import tqdm

    from rtgen.inference.images import synthesise
    from rtgen.inference.writers import write_image

    batch = Batch("patients", len(paths))

    def predict_one(path: Path) -> None:
        volume, pair = synthesise(predictor, path, batch_size, sampling, register, notify=out.print)
        write_image(out_dir, path.name, volume, pair.affine)

    for path in tqdm(paths, desc="synthesising", unit="patient"):
        batch.run(path.name, lambda p=path: predict_one(p))
    batch.finish(f"predicted -> {out_dir}")
