"""`rtgen plan`: a deliverable plan per patient that mimics a dose (a prediction), on pyRadPlan's photon engine."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from rtgen.cli.app import Batch, aliases_option, app, dicom_options, out, preflight, user_errors
from rtgen.core.errors import ConfigError, RtgenError


class PlanFormat(str, Enum):
    csv = "csv"
    nifti = "nifti"
    dicom = "dicom"  # <id>_RTDOSE.dcm and <id>_RTPLAN.dcm on the CT of a DICOM patient folder


class ObjectiveForm(str, Enum):
    voxel = "voxel"
    dvh = "dvh"
    bands = "bands"


def _floats(text: str, what: str, count: int | None = None) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v != "")
    except ValueError:
        raise ConfigError(what, f"{text!r} is not a comma-separated list of numbers") from None
    if count is not None and len(values) != count:
        raise ConfigError(what, f"{text!r}: expected {count} numbers")
    return values


def band_goals_for(dose_dir: Path, patient_id: str) -> dict:
    """The OAR goals of `--objective bands` from `<id>_dvh.csv` beside the patient's dose; a missing,
    malformed or OAR-less estimate is one line naming the file."""
    from rtgen.dosimetry.bands import dvh_estimate_path, read_dvh_estimate

    path = dvh_estimate_path(dose_dir, patient_id)
    rows = read_dvh_estimate(dose_dir, patient_id)
    if rows is None:
        raise RtgenError(f"{path}: no DVH estimate for patient {patient_id}: --objective bands reads <id>_dvh.csv "
                         "beside the dose, as rtgen predict writes it for a model with bands")
    return _goals_of(rows, path)


def _goals_of(rows: list[dict], path: Path) -> dict:
    from rtgen.planning.optimise import band_goals

    goals = band_goals(rows, source=str(path))
    if not goals:
        raise RtgenError(f"{path}: the DVH estimate bands no OAR mean or D_0.1_cc: --objective bands has no OAR "
                         "goal to place (use --objective voxel)")
    return goals


@app.command()
@user_errors
def plan(
    patients: Path = typer.Option(..., "--patients", help="A split folder of patients, or one patient (OpenKBP CSV or NIfTI folder, .npz, or a DICOM export): each needs a CT and at least one PTV."),
    dose: Path | None = typer.Option(None, "--dose", help="The doses to mimic: a folder of pt_N.csv, pt_N.nii.gz or <id>_RTDOSE.dcm as rtgen predict writes them, on each patient's grid (or a split folder: each patient's own dose). Or --model."),
    model: str | None = typer.Option(None, "--model", help="Predict each patient's dose first with this model and plan from it: hub:NAME, a run folder, or default (the shipped default dose model). The predictions (and DVH estimates) are written to OUT/prediction/. Instead of --dose."),
    out_dir: Path = typer.Option(..., "--out", help="Where the delivered doses, RTPLANs, fluence maps, plans.csv and summary.json go."),
    fmt: PlanFormat = typer.Option(PlanFormat.csv, "--format", help="The delivered dose as csv, nifti, or dicom (an RTDOSE and an RTPLAN on the patient's CT; DICOM patients only)."),
    beams: int = typer.Option(9, "--beams", help="Number of equispaced coplanar beams (gantry 0, 360/N, ...)."),
    angles: str | None = typer.Option(None, "--angles", help="Gantry angles in degrees, comma-separated (IEC 61217), instead of --beams."),
    energy: float = typer.Option(6.0, "--energy", help="Photon energy in MV (pyRadPlan's generic machine has 6 MV only)."),
    bixel: float = typer.Option(7.0, "--bixel", help="Beamlet size in mm at the isocentre (5, 7 or 10 mm: finer is closer and slower)."),
    isocentre: str | None = typer.Option(None, "--isocentre", help="x,y,z in patient mm (DICOM LPS); default: the targets' centroid."),
    objective: ObjectiveForm = typer.Option(ObjectiveForm.dvh, "--objective", help="dvh (the default): mimic the dose's DVH points (each OAR's D0.1cc and mean no higher, each PTV's D99 and D95 no lower and D1 no higher) beside its voxels; voxel: its voxels alone; bands: each OAR's mean and D0.1cc at the lower edge of its 80 % band (the DVH estimate <id>_dvh.csv beside the dose, as rtgen predict writes it) beside the voxel term."),
    mimic_weight: float = typer.Option(1.0, "--mimic-weight", min=0, help="Weight of the voxel mimicking term."),
    target_weight: float = typer.Option(1.0, "--target-weight", min=0, help="Weight of the PTV coverage objective (dose below the prescription)."),
    hot_weight: float = typer.Option(0.5, "--hot-weight", min=0, help="Weight of the PTV hot-spot objective (dose above 107 % of the prescription)."),
    smooth_weight: float = typer.Option(10.0, "--smooth-weight", min=0, help="Weight of the fluence smoothing term (neighbouring beamlets' weights alike): fewer monitor units for the same dose; 0 turns it off."),
    iterations: int = typer.Option(150, "--iterations", min=1, help="L-BFGS-B iterations."),
    levels: int = typer.Option(10, "--levels", min=1, max=100, help="Intensity levels of the leaf sequencing."),
    leaf_width: float | None = typer.Option(None, "--leaf-width", help="MLC leaf width in mm at the isocentre (default: the beamlet size)."),
    fractions: int = typer.Option(35, "--fractions", min=1, help="Fractions of the course (the input dose is the whole course; MUs are per fraction)."),
    cache: Path | None = typer.Option(None, "--cache", help="Folder of cached influence matrices (default OUT/influence): planning the same patient and beams again reads them."),
    aliases: Path | None = aliases_option("patients"),
):
    """Plan each patient: influence matrix, fluence optimisation mimicking its dose, leaf sequencing, and the
    delivered dose. A patient that cannot be planned is reported and skipped; exit 1 if any."""
    if (dose is None) == (model is None):
        raise RtgenError("rtgen plan mimics a dose: give either --dose (a folder of doses) or --model (predict them "
                         "first)" + (", not both" if dose is not None else ""))
    preflight(outputs=[out_dir], inputs=[patients, dose, aliases])
    names = dicom_options(aliases)
    if model is not None and model.startswith("hub:"):  # an unknown name lists the shipped ones, at once
        from rtgen.hub import shipped_model_dir

        shipped_model_dir(model[len("hub:"):])
    from rtgen.planning.engine import BeamSet
    from rtgen.planning.optimise import Objective
    from rtgen.planning.plan import PlanSettings

    if angles is not None:
        gantry = _floats(angles, "--angles")
        if not gantry:
            raise ConfigError("--angles", "the beam set is empty: give at least one gantry angle")
    elif beams < 1:
        raise ConfigError("--beams", f"{beams} beams: the beam set is empty")
    else:
        gantry = tuple(round(360.0 * i / beams, 6) for i in range(beams))
    iso = _floats(isocentre, "--isocentre", 3) if isocentre is not None else None
    settings = PlanSettings(BeamSet(gantry, energy, bixel, iso),
                            Objective(objective.value, mimic_weight, target_weight, hot_weight, iterations=iterations,
                                      smooth_weight=smooth_weight),
                            levels, leaf_width, fractions=fractions)

    from tqdm.auto import tqdm

    from rtgen.core.atomic import output_dir
    from rtgen.core.structures import GRID_SHAPE
    from rtgen.data.sources import load_patient, patients_in
    from rtgen.dosimetry.bands import dvh_estimate_path
    from rtgen.evaluation.dose import find_prediction, read_prediction
    from rtgen.planning.engine import blas_threads_note, patient_origin, require_pyradplan
    from rtgen.planning.outputs import write_plan, write_tables
    from rtgen.planning.plan import make_plan

    paths = patients_in(patients)
    if fmt is PlanFormat.dicom:
        from rtgen.data.sources.dicom import is_dicom_dir

        others = [p for p in paths if not is_dicom_dir(p)]
        if others:
            raise RtgenError(f"{others[0]}: --format dicom writes an RTPLAN and an RTDOSE onto the patient's own CT "
                             "series, and this patient is not a DICOM export; use --format nifti or csv")
    if objective is ObjectiveForm.bands and dose is not None and dose.is_dir() and not any(dose.glob("*_dvh.csv")):
        raise RtgenError(f"{dose}: no DVH estimate (<id>_dvh.csv): --objective bands reads each patient's beside "
                         "its dose, as rtgen predict writes them for a model with bands (the default dose model)")
    require_pyradplan()  # a missing or broken install fails now, before any patient
    predictor = _dose_predictor(model, objective is ObjectiveForm.bands) if model is not None else None
    note = blas_threads_note()
    if note:
        out.print(f"[cyan]note:[/] {note}")
    cache_dir = cache if cache is not None else out_dir / "influence"
    rows, judged = [], []
    batch = Batch("patients", len(paths))
    with output_dir(out_dir, len(paths) * 30_000_000):
        def plan_one(path: Path) -> None:
            patient = load_patient(path, aliases=names, require_target=True)
            if fmt is PlanFormat.csv and tuple(patient.grid) != GRID_SHAPE:  # before minutes of planning
                raise RtgenError(f"{path}: grid {tuple(patient.grid)}; CSV doses are on the OpenKBP grid "
                                 f"{GRID_SHAPE}: use --format nifti")
            goals = None
            if predictor is not None:
                input_dose, estimate = _predicted(predictor, patient, path, out_dir / "prediction", fmt.value)
                if objective is ObjectiveForm.bands:
                    goals = _goals_of(estimate, dvh_estimate_path(out_dir / "prediction", patient.id))
            else:
                found = find_prediction(dose, patient.id)
                if found is None:
                    raise RtgenError(f"{dose}: no dose for patient {patient.id} (expected {patient.id}.csv, "
                                     f"{patient.id}.nii.gz or {patient.id}_RTDOSE.dcm)")
                if objective is ObjectiveForm.bands:  # before minutes of influence matrix
                    goals = band_goals_for(dose, patient.id)
                input_dose = read_prediction(found, patient.grid, path, patient.possible_dose_mask)
            ref = None
            if fmt is PlanFormat.dicom:
                from rtgen.data.sources.dicom import read_ct_reference

                ref = read_ct_reference(path)
            origin = patient_origin(patient, ref)
            bars = {}

            def bar(name: str, total: int, unit: str):  # each stage's bar starts with the stage
                if name not in bars:
                    bars[name] = tqdm(total=total, desc=f"{patient.id}: {name}", unit=unit, leave=False)
                return bars[name]

            def on_beam(current, total):
                b = bar("influence matrix", total, "beam")
                b.n = current
                b.refresh()

            def on_iteration(i, value):
                b = bar("optimisation", settings.objective.iterations, "it")
                b.n = i
                b.set_postfix(objective=f"{value:.3g}")

            def on_stage(stage, message):
                for b in bars.values():
                    b.close()
                out.print(f"{patient.id}: {stage}: {message}")

            try:
                result = make_plan(patient, input_dose, settings, origin, cache_dir, report=on_stage,
                                   beam_progress=on_beam, iteration_progress=on_iteration, goals=goals)
            finally:
                for b in bars.values():
                    b.close()
            row, j = write_plan(out_dir, patient, input_dose, result, fmt.value, path, goals)
            rows.append(row)
            judged.append(j)
            out.print(f"{patient.id}: MAE to the input {row['mae_to_input_gy']:.2f} Gy, after sequencing "
                      f"{row['mae_to_input_sequenced_gy']:.2f} Gy; {row['segments']} segments, "
                      f"{row['mu_per_fraction']:.0f} MU per fraction"
                      + (f"; OAR band goals met: {row['band_goals_met_plan']} of {row['band_goals']} (the input "
                         f"{row['band_goals_met_input']})" if goals is not None else ""))

        for path in paths:
            batch.run(path.name, lambda p=path: plan_one(p))
        if rows:
            summary = write_tables(out_dir, rows, judged)
            shares = ", ".join(f"{k[len('criteria_share_met_'):]} {v:.0%}" for k, v in summary.items()
                               if k.startswith("criteria_share_met_"))
            out.print(f"clinical criteria met ({summary['criteria_set']}): {shares}")
            out.print(f"plans.csv and summary.json written to [bold]{out_dir}[/]")
    batch.finish(f"planned -> {out_dir}")


def _dose_predictor(model: str, bands: bool):
    """`--model`: the dose model, loaded once and checked before any patient (a CT -> MR model, or a model
    without DVH estimate bands under --objective bands, is one line)."""
    from rtgen.hub import default_model, shipped_model_dir
    from rtgen.inference import load_predictor, resolve_model

    path = shipped_model_dir(default_model("dose")) if model == "default" else resolve_model(model)
    predictor = load_predictor(path, "cpu")
    if predictor.output_kind != "dose":
        raise RtgenError(f"{model}: a {predictor.task.model_name} model predicts images, not doses: plan from a "
                         "dose model")
    if bands and getattr(predictor.task, "dvh_bands", None) is None:
        raise RtgenError(f"{model}: this model gives no DVH estimate bands, which --objective bands needs (the "
                         "shipped default dose model gives them)")
    out.print(f"model: {path.name}")
    return predictor


def _predicted(predictor, patient, path: Path, folder: Path, fmt: str):
    """Predict `patient`'s dose and write it to `folder` (with its DVH estimate where the model gives one),
    as rtgen predict does: (dose, estimate rows or None)."""
    from rtgen.cli.predict import _write_dvh_estimate
    from rtgen.inference.writers import write_dose

    dose, std = predictor.predict_with_uncertainty(patient)
    write_dose(folder, patient.id, dose, patient.spacing, "nifti" if fmt == "dicom" else fmt, std,
               source=path, body=patient.possible_dose_mask)
    return dose, _write_dvh_estimate(folder, predictor.task, patient, dose, {})
