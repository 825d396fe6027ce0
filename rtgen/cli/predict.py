"""`rtgen predict`: whole-volume predictions for a split or one patient, in any layout rtgen reads."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from rtgen.cli.app import app, err, fail, out, user_errors
from rtgen.core.errors import RtgenError


class PredFormat(str, Enum):
    csv = "csv"
    nifti = "nifti"


@app.command()
@user_errors
def predict(
    patients: Path = typer.Option(..., "--patients", help="A split folder of patients, or one patient folder (CSV or NIfTI) or .npz."),
    out_dir: Path = typer.Option(..., "--out", help="Where pt_N.csv (or pt_N.nii.gz) predictions go."),
    model: Optional[Path] = typer.Option(None, "--model", help="Run directory or model.safetensors (config.json beside it). Default: the shipped default dose model."),
    fmt: PredFormat = typer.Option(PredFormat.csv, "--format", help="csv (OpenKBP submission) or nifti."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    tta: bool = typer.Option(False, "--tta/--no-tta", help="Average over in-plane flips (3x slower)."),
    batch_size: int = typer.Option(32, min=1, help="Slices per forward pass."),
    sampler: str = typer.Option("dpmpp", help="Diffusion models: ddpm, ddim, dpmpp or ode."),
    steps: int = typer.Option(10, min=1, help="Diffusion models: sampling steps."),
    samples: int = typer.Option(1, min=1, help="Diffusion models: samples per patient; K > 1 also writes pt_N_std.nii.gz."),
    seed: int = typer.Option(0, help="Diffusion models: random seed (predictions are deterministic for a seed)."),
):
    """Predict whole doses. A patient that fails to load is reported and skipped; exit 1 if any failed."""
    from tqdm.auto import tqdm

    from rtgen.data.sources import load_patient, patients_in
    from rtgen.diffusion import SAMPLERS
    from rtgen.hub import default_model, shipped_model_dir
    from rtgen.inference import load_predictor
    from rtgen.inference.writers import write_dose
    from rtgen.tasks.dose_base import SamplingConfig

    if sampler not in SAMPLERS:
        raise RtgenError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    paths = patients_in(patients)
    if model is None:
        model = shipped_model_dir(default_model("dose_regression"))
        out.print(f"model: the shipped default, {model.name}")
    predictor = load_predictor(model, device)
    diffusion = predictor.task.stochastic
    if samples > 1 and not diffusion:
        raise RtgenError(f"--samples {samples}: {predictor.task.model_name} is deterministic; "
                         "several samples need a diffusion model")
    sampling = SamplingConfig(sampler, steps, samples, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    for path in tqdm(paths, desc="predicting", unit="patient"):
        try:
            patient = load_patient(path)
            dose, std = predictor.predict_with_uncertainty(patient, batch_size, tta, sampling if diffusion else None)
            write_dose(out_dir, patient.id, dose, patient.spacing, fmt.value, std)  # std: spread of K samples
        except RtgenError as e:
            failed.append(path.name)
            fail(f"{e} (skipped)")
    out.print(f"{len(paths) - len(failed)} of {len(paths)} patients predicted -> [bold]{out_dir}[/]")
    if failed:
        err.print(f"[red]failed:[/] {', '.join(failed)}", soft_wrap=True)
        raise typer.Exit(1)
