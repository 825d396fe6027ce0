"""Networks assembled from blocks. `build_model(name, **config)` knows every model by name."""

from __future__ import annotations

from rtgen.nets.unet2d import DoseUNet2D, UNet2DConfig

MODELS = {
    "mamba_unet_v2": dict(mixer="mamba2"),
    "unet": dict(mixer="none"),
    "transformer_unet": dict(mixer="attention"),
}


def model_config(name: str, **overrides) -> UNet2DConfig:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return UNet2DConfig(**{**MODELS[name], **overrides})


def build_model(name: str, **overrides) -> DoseUNet2D:
    return DoseUNet2D(model_config(name, **overrides))


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["DoseUNet2D", "MODELS", "UNet2DConfig", "build_model", "count_parameters", "model_config"]
