"""The model card of a DiffKT3D run (MODEL_CARD.md)."""

from __future__ import annotations

from rtgen.tasks.diffkt3d.sections import AUTOENCODER_DIR


def model_card(task, summary: dict) -> str:
    """MODEL_CARD.md of a trained run: the stage, slots, flow and sampling settings, how the dose
    relates to the prior, the training and the validation scores."""
    t, v = summary["training"], summary.get("validation", {})
    nan = float("nan")
    from_prior = task.latent.dose_from_prior and "prior" in task.modalities
    return "\n".join([
        f"# {summary['model']['name']}: DiffKT3D stage {task.any2any.stage} ({task.name})", "",
        f"- Slots: {', '.join(task.modalities)}; latents of the frozen volume autoencoder copied in "
        f"`{AUTOENCODER_DIR}/`.",
        f"- Flow matching (x_t = (1 - t) x0 + t eps, shift {task.flow.shift}), the network predicting "
        f"{'x0' if task.flow.prediction == 'sample' else 'v = eps - x0'}; sampling {task.sampling.method}, "
        f"{task.sampling.steps} steps, best of {task.sampling.best_of} by scorecard.",
        *([f"- The dose is generated as a change to the prior ({task.prior.model}): prior + D(z) - D(z_prior)"
           + (", with x0 = the prior's latent + the network's output" if task.flow.prediction == "sample" else "")
           + "."] if from_prior else []),
        f"- Trained on {t.get('train_patients', '?')} patients, {t['epochs_run']} epochs, "
        f"{t['seconds'] / 60:.1f} min on {t['hardware']}.",
        f"- Validation ({t.get('val_patients', '?')} patients, 1 sample): dose score "
        f"{v.get('dose_score', nan):.3f} Gy, DVH score {v.get('dvh_score', nan):.3f} Gy, GDP-HMM MAE "
        f"{v.get('gdp_hmm_mae', nan):.3f} Gy, scorecard {v.get('scorecard', nan):.3f}.", "",
    ])
