"""`rtgen demo`: the README's first command: a shipped model on the bundled patients, evaluated."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from rtgen.cli.app import app, out, preflight, user_errors
from rtgen.cli.evaluate import print_evaluation
from rtgen.hub import default_model, shipped_models

ShippedModel = Enum("ShippedModel", {s.model: s.model for s in shipped_models()}, type=str)


@app.command()
@user_errors
def demo(
    out_dir: Path = typer.Option(Path("rtgen-out/demo"), "--out", help="Predictions, metrics and DVH figures."),
    tta: bool = typer.Option(False, "--tta/--no-tta", help="Average over in-plane flips."),
    model: ShippedModel = typer.Option(next(s.model for s in shipped_models() if s.folder == default_model("dose")),
                                       "--model", help="Which shipped model (default: the best dose model): "
                                       + ", ".join(s.model for s in shipped_models()) + "; md_dose samples with "
                                       "DPM-Solver++, 10 steps."),
):
    """Predict the bundled example patients with a shipped model, evaluate them, plot DVHs."""
    preflight(outputs=[out_dir])  # an unwritable --out fails in a second, before any heavy import
    import time

    from rtgen.core.atomic import prepare_output_dir
    from rtgen.data.examples import example_patients_dir
    from rtgen.data.sources import PatientSplit
    from rtgen.evaluation import evaluate_folders
    from rtgen.hub import shipped_model_dir
    from rtgen.inference import load_predictor
    from rtgen.inference.writers import write_dose

    t0 = time.perf_counter()
    name = model.value if isinstance(model, Enum) else str(model)
    examples = example_patients_dir()
    prepare_output_dir(out_dir, 30_000_000)  # a read-only or full --out fails now, not after the predictions
    predictor = load_predictor(shipped_model_dir(name), "cpu")
    pred_dir = out_dir / "predictions"
    for patient in PatientSplit(examples, progress=False):
        t = time.perf_counter()
        write_dose(pred_dir, patient.id, predictor.predict(patient, tta=tta), patient.spacing)
        out.print(f"{patient.id}: predicted in {time.perf_counter() - t:.1f} s")
    result = evaluate_folders(pred_dir, examples, out_dir / "evaluation", progress=False)
    print_evaluation(result)
    card = predictor.config.get("validation", {})
    n_val = card.get("patients") or predictor.config.get("training", {}).get("val_patients", "?")
    out.print(f"shipped model: {predictor.task.model_name}, validation dose score "
              f"{card.get('dose_score', float('nan')):.3f} Gy, DVH score {card.get('dvh_score', float('nan')):.3f} Gy "
              f"on {n_val} OpenKBP validation patients (see its MODEL_CARD.md)")
    from rtgen.evaluation.report import write_report

    report = write_report(pred_dir, examples, out_dir / "report.html", title=f"rtgen demo: {name}")
    out.print(f"HTML report (slices, DVHs, metrics; opens offline): [bold]{report}[/]")
    out.print(f"predictions, metrics and DVH figures in [bold]{out_dir}[/] ({time.perf_counter() - t0:.0f} s)")
