"""The `rtgen` command. Each subcommand is a thin shell over library functions."""

from __future__ import annotations

import functools
import json
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from rtgen import __version__
from rtgen.errors import RtgenError, RtgenWarning
from rtgen.models import SHIPPED_BY_MODEL

app = typer.Typer(
    help="rtgen: radiotherapy dose prediction and evaluation with state-space and diffusion models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
convert_app = typer.Typer(help="Convert patient data between formats.", no_args_is_help=True)
app.add_typer(convert_app, name="convert")
bench_app = typer.Typer(help="Benchmarks that print a table (state the machine beside any figure you quote).",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")

out = Console()
err = Console(stderr=True)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, RtgenWarning):
        err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
    else:
        err.print(f"[yellow]warning:[/] {category.__name__}: {message}", highlight=False, soft_wrap=True)


def user_errors(fn):
    """Turn RtgenError into one clear line on stderr and exit status 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        warnings.showwarning = _show_warning
        try:
            return fn(*args, **kwargs)
        except RtgenError as e:
            err.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("[red]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def _version(value: bool):
    if value:
        out.print(f"rtgen {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    """rtgen: radiotherapy dose prediction and evaluation."""


@app.command()
@user_errors
def inspect(
    patients: Optional[List[Path]] = typer.Argument(
        None, help="Patient folders (OpenKBP CSV, NIfTI cache) or .npz caches, or split folders. Default: the bundled examples."
    ),
    out_dir: Path = typer.Option(Path("rtgen-out/inspect"), "--out", help="Where DVH figures and summary.json go."),
    as_json: bool = typer.Option(False, "--json", help="Print the summaries as JSON instead of tables."),
):
    """Summarise patients: structures and volumes, spacing, dose statistics, plan DVH metrics; plot DVHs."""
    from rtgen.atomic import atomic_write_text, staged_dir
    from rtgen.data.openkbp import is_patient_dir
    from rtgen.data.patients import find_patients, load_patient
    from rtgen.inspect import example_patients_dir, summarize
    from rtgen.plots import plot_dvh

    paths: list[Path] = []
    for p in patients or [example_patients_dir()]:
        is_single = p.suffix == ".npz" or is_patient_dir(p) or (p / "possible_dose_mask.nii.gz").is_file()
        paths += [p] if is_single else find_patients(p)
    summaries = []
    with staged_dir(out_dir) as stage:
        for path in paths:
            patient = load_patient(path)
            s = summarize(patient)
            summaries.append(s)
            if patient.dose is not None:
                s["dvh_figure"] = str(out_dir / f"dvh_{patient.id}.png")
                plot_dvh(stage / f"dvh_{patient.id}.png", patient.structures, patient.dose, title=f"{patient.id}: plan DVH")
            if not as_json:
                _print_summary(s)
        atomic_write_text(stage / "summary.json", json.dumps(summaries, indent=2) + "\n")
    if as_json:
        print(json.dumps(summaries, indent=2))
    else:
        out.print(f"figures and summary.json written to [bold]{out_dir}[/]")


def _print_summary(s: dict) -> None:
    from rtgen.inspect import SUMMARY_COLUMNS, summary_rows

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
    from rtgen.atomic import staged_dir
    from rtgen.data.cache import write_nifti_patient, write_npz
    from rtgen.data.patients import PatientSplit

    split = PatientSplit(src)
    with staged_dir(dest) as stage:
        for patient in split:
            if fmt is CacheFormat.npz:
                write_npz(patient, stage / f"{patient.id}.npz")
            else:
                write_nifti_patient(patient, stage / patient.id)
    out.print(f"{len(split)} patients -> {dest} ({fmt.value})")


@app.command()
@user_errors
def evaluate(
    pred: Path = typer.Option(..., "--pred", help="Predictions: pt_N.csv (submission format) or pt_N.nii.gz."),
    ref: Path = typer.Option(..., "--ref", help="Reference split folder (patients with dose.csv)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Write metrics.json, per_patient.csv and DVH figures here."),
    gamma: bool = typer.Option(False, "--gamma", help="Also compute the 3%/3 mm global gamma pass rate (slower)."),
):
    """OpenKBP dose and DVH scores, per-metric errors and HI, exactly as the challenge computes them."""
    from rtgen.evaluation import evaluate_folders

    result = evaluate_folders(pred, ref, out_dir, gamma=gamma)
    print_evaluation(result)
    if out_dir is not None:
        out.print(f"metrics.json, per_patient.csv and DVH figures written to [bold]{out_dir}[/]")


def print_evaluation(result) -> None:
    s = result.summary()
    table = Table(title=f"OpenKBP evaluation ({s['n_patients']} patients)", title_justify="left")
    table.add_column("metric")
    table.add_column("value (Gy)", justify="right")
    table.add_row("[bold]dose score[/]", f"[bold]{s['dose_score']:.4f}[/]")
    table.add_row("[bold]DVH score[/]", f"[bold]{s['dvh_score']:.4f}[/]")
    for m, v in s["dvh_metric_errors"].items():
        table.add_row(f"  |error| {m}", f"{v:.4f}")
    for t, v in s["hi_abs_error"].items():
        table.add_row(f"  |error| HI {t} (unitless)", f"{v:.4f}")
    if "uncertainty_error_correlation_mean" in s:
        table.add_row("uncertainty vs |error| correlation", f"{s['uncertainty_error_correlation_mean']:.3f}")
    if "gamma_pass_rate_mean" in s:
        table.add_row("gamma pass rate 3%/3mm (%)", f"{s['gamma_pass_rate_mean']:.2f}")
    out.print(table)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def train(
    ctx: typer.Context,
    config: Path = typer.Argument(..., help="YAML config (see configs/)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory (default: train.out from the config)."),
):
    """Train a dose model: `rtgen train CONFIG.yaml [section.key=value ...]`. Also runs under torchrun."""
    from rtgen.train.config import load_config
    from rtgen.train.trainer import Trainer

    overrides = list(ctx.args)
    if resume is not None and not (resume / "resolved_config.yaml").is_file():
        raise RtgenError(f"{resume}: not a run directory (no resolved_config.yaml)")
    cfg = load_config(resume / "resolved_config.yaml" if resume is not None else config, overrides)
    run_dir = resume or out_dir or Path(cfg.train.out)
    result = Trainer(cfg, run_dir, resume=resume is not None).fit()
    out.print(f"best validation dose score {result['best_dose_score']:.3f} Gy after {result['epochs']} epochs; "
              f"run directory [bold]{run_dir}[/]")


class PredFormat(str, Enum):
    csv = "csv"
    nifti = "nifti"


@app.command()
@user_errors
def predict(
    model: Path = typer.Option(..., "--model", help="Run directory or model.safetensors (config.json beside it)."),
    patients: Path = typer.Option(..., "--patients", help="A split folder of patients, or one patient folder."),
    out_dir: Path = typer.Option(..., "--out", help="Where pt_N.csv (or pt_N.nii.gz) predictions go."),
    fmt: PredFormat = typer.Option(PredFormat.csv, "--format", help="csv (OpenKBP submission) or nifti."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    tta: bool = typer.Option(False, "--tta/--no-tta", help="Average over in-plane flips (3x slower)."),
    batch_size: int = typer.Option(32, help="Slices per forward pass."),
    sampler: str = typer.Option("dpmpp", help="Diffusion models: ddpm, ddim, dpmpp or ode."),
    steps: int = typer.Option(10, help="Diffusion models: sampling steps."),
    samples: int = typer.Option(1, help="Diffusion models: samples per patient; K > 1 also writes pt_N_std.nii.gz."),
    seed: int = typer.Option(0, help="Diffusion models: random seed (predictions are deterministic for a seed)."),
):
    """Predict whole 128^3 doses. A patient that fails to load is reported and skipped; exit 1 if any failed."""
    from rtgen.data.openkbp import is_patient_dir, write_dose_csv
    from rtgen.data.nifti import write_nifti
    from rtgen.data.patients import find_patients, load_patient
    from rtgen.predict import load_predictor

    from rtgen.diffusion import SAMPLERS
    from rtgen.tasks import SamplingConfig

    predictor = load_predictor(model, device)
    diffusion = predictor.task.diffusion is not None
    if sampler not in SAMPLERS:
        raise RtgenError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if samples > 1 and not diffusion:
        raise RtgenError(f"--samples {samples}: {predictor.config['model']['name']} is deterministic; "
                         "several samples need a diffusion model")
    sampling = SamplingConfig(sampler, steps, samples, seed)
    paths = [patients] if is_patient_dir(patients) or patients.suffix == ".npz" else find_patients(patients)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    from tqdm.auto import tqdm

    for path in tqdm(paths, desc="predicting", unit="patient"):
        try:
            patient = load_patient(path)
            dose, std = predictor.predict_with_uncertainty(patient, batch_size, tta, sampling if diffusion else None)
            if fmt is PredFormat.csv:
                write_dose_csv(out_dir / f"{patient.id}.csv", dose)
            else:
                write_nifti(out_dir / f"{patient.id}.nii.gz", dose, patient.spacing)
            if std is not None:  # voxel-wise spread of the K samples, beside the mean
                write_nifti(out_dir / f"{patient.id}_std.nii.gz", std, patient.spacing)
        except RtgenError as e:
            failed.append(path.name)
            err.print(f"[red]error:[/] {e} (skipped)", highlight=False, soft_wrap=True)
    out.print(f"{len(paths) - len(failed)} of {len(paths)} patients predicted -> [bold]{out_dir}[/]")
    if failed:
        err.print(f"[red]failed:[/] {', '.join(failed)}", soft_wrap=True)
        raise typer.Exit(1)


ShippedModel = Enum("ShippedModel", {name: name for name in SHIPPED_BY_MODEL}, type=str)


@app.command()
@user_errors
def demo(
    out_dir: Path = typer.Option(Path("rtgen-out/demo"), "--out", help="Predictions, metrics and DVH figures."),
    tta: bool = typer.Option(False, "--tta/--no-tta", help="Average over in-plane flips."),
    model: ShippedModel = typer.Option(ShippedModel.mamba_unet_v2, "--model",
                                       help="Which shipped model: mamba_unet_v2 or md_dose (DPM-Solver++, 10 steps)."),
):
    """Predict the bundled example patients with a shipped model, evaluate them, plot DVHs."""
    import time

    from rtgen.data.openkbp import write_dose_csv
    from rtgen.evaluation import evaluate_folders
    from rtgen.inspect import example_patients_dir
    from rtgen.data.patients import PatientSplit
    from rtgen.predict import load_predictor
    from rtgen.models import shipped_model_dir

    t0 = time.perf_counter()
    predictor = load_predictor(shipped_model_dir(model.value), "cpu")
    examples = example_patients_dir()
    pred_dir = out_dir / "predictions"
    for patient in PatientSplit(examples, progress=False):
        t = time.perf_counter()
        write_dose_csv(pred_dir / f"{patient.id}.csv", predictor.predict(patient, tta=tta))
        out.print(f"{patient.id}: predicted in {time.perf_counter() - t:.1f} s")
    result = evaluate_folders(pred_dir, examples, out_dir / "evaluation", progress=False)
    print_evaluation(result)
    card = predictor.config.get("validation", {})
    n_val = card.get("patients") or predictor.config.get("training", {}).get("val_patients", "?")
    out.print(f"shipped model: {predictor.config['model']['name']}, validation dose score "
              f"{card.get('dose_score', float('nan')):.3f} Gy, DVH score {card.get('dvh_score', float('nan')):.3f} Gy "
              f"on {n_val} OpenKBP validation patients (see its MODEL_CARD.md)")
    out.print(f"predictions, metrics and DVH figures in [bold]{out_dir}[/] ({time.perf_counter() - t0:.0f} s)")


@bench_app.command("ssm")
@user_errors
def bench_ssm(
    device: str = typer.Option("cpu", help="cpu or cuda"),
    lengths: List[int] = typer.Option([1024, 4096, 16384, 65536], "--length", help="Sequence lengths (repeatable)."),
    widths: List[int] = typer.Option([64, 128], "--width", help="Model widths (repeatable)."),
    budget: float = typer.Option(60.0, help="Skip a measurement estimated to take longer than this (s)."),
    only: Optional[List[str]] = typer.Option(None, help="Run only implementations whose name contains this."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the rows as JSON."),
):
    """Selective scan, Mamba and Mamba2 blocks vs the sequential reference, mambapy, transformers and attention."""
    from rtgen.bench.ssm import format_table, format_targets, machine_description, run_benchmark, save_json, targets

    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise RtgenError("--device cuda requested but no CUDA device is available")
    rows = run_benchmark(lengths, widths, device, budget, only=only, progress=lambda m: err.print(f"[dim]{m}[/]"))
    out.print(f"machine: {machine_description(device)}\n", highlight=False)
    print(format_table(rows))
    print()
    print(format_targets(targets(rows)))
    if json_out:
        save_json(json_out, rows, device)


def run():  # console-script entry point
    app()


if __name__ == "__main__":
    sys.exit(run())
