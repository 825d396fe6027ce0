"""The model card of a dose model: a short, honest MODEL_CARD.md written beside every best checkpoint."""

from __future__ import annotations

from rtgen.data.transforms.features import FeatureConfig


def _objective(summary: dict) -> str:
    d = summary.get("diffusion")
    if not d:
        return "Smooth L1 in the possible dose mask"
    where = " in the possible dose mask" if d.get("loss_in_mask") else ""
    weight = "SNR-weighted" if d.get("snr_weighting") else "unweighted (DDPM simple loss)"
    return (f"denoising MSE{where}, {d['prediction']} prediction, {weight}, {d['schedule']} schedule with"
            f" T = {d['timesteps']}")


def dose_model_card(summary: dict) -> str:
    t = summary["training"]
    c = t["config"]
    v = summary.get("validation", {})
    arch = summary["model"]["architecture"]
    lines = [
        f"# {summary['model']['name']} dose predictor",
        "",
        "Predicts a 3D radiotherapy dose (Gy) for head-and-neck OpenKBP patients from axial slices of CT,",
        "PTV (prescription / 70), possible dose mask, OAR masks and prescription-specific distance maps.",
        "",
        "## Data",
        f"- Training: {t['train_patients']} patients ({t['train_slices']} axial slices touching the possible dose mask)"
        f" from `{c['data']['train']}`.",
        f"- Validation (model selection by dose score): {t['val_patients']} patients from `{c['data']['val']}`.",
        "- OpenKBP: Babier et al., Medical Physics 48:5549-5561, 2021.",
        "",
        "## Model",
        f"- Architecture: `{summary['model']['name']}`, {summary['model']['parameters']:,} parameters; "
        + ", ".join(f"{k} {v}" for k, v in arch.items()) + ".",
        f"- Inputs: {FeatureConfig.from_dict(summary['features']).n_channels} feature channels"
        f" ({', '.join(FeatureConfig.from_dict(summary['features']).channel_names)}); CT window {summary['normalisation']['ct_window_hu_plus_1024']} (HU + 1024) -> [-1, 1];"
        f" dose [0, {summary['normalisation']['dose_range_gy'][1]:g}] Gy -> [-1, 1].",
        "",
        "## Training",
        f"- Hardware: {t['hardware']}.",
        f"- Time: {t['seconds'] / 60:.1f} min, {t['epochs_run']} epochs, {t['steps']} steps of batch"
        f" {c['train']['batch_size']}, AdamW lr {c['train']['lr']:g}, weight decay {c['train']['weight_decay']:g},"
        f" warm-up {c['train']['warmup_steps']} steps then cosine, {_objective(summary)},"
        f" EMA {c['train']['ema_decay']}.",
        f"- rtgen {t['rtgen_version']}; resolved config in `resolved_config.yaml`, per-epoch log in `log.csv`.",
        "",
        "## Validation scores (OpenKBP definitions)",
        f"- Dose score: {v.get('dose_score', float('nan')):.3f} Gy; DVH score: {v.get('dvh_score', float('nan')):.3f} Gy"
        f" (epoch {v.get('epoch', '-')}).",
        "- Reproduce: `rtgen predict --model THIS_FOLDER --patients VALIDATION_SPLIT --out pred &&"
        " rtgen evaluate --pred pred --ref VALIDATION_SPLIT`.",
        "",
    ]
    d = summary.get("diffusion")
    if d:
        lines[-2:-2] = [f"- Validation predictions are one sample per patient from {d['val_sampler']} with"
                        f" {d['val_steps']} steps (seed 0); `rtgen predict` uses the same defaults."]
    notes = summary.get("notes")
    if notes:
        lines += ["## Notes", "", notes, ""]
    return "\n".join(lines)
